// Baton status page: reads GET /v1/overview every 2 s (and at once when the event
// feed, long-polled, has news) with the API token the operator typed. The token lives
// in this closure only: never in a cookie or in storage, so a reload forgets it and no
// other site can make the browser use it. Everything shown is set as text, never as
// HTML.
'use strict';
(() => {
  const REFRESH_MS = 2000;
  let token = null;
  let lastEvent = 0;
  let query = '';
  let timer = null;
  let inflight = null;
  let generation = 0;

  const $ = (id) => document.getElementById(id);

  class AuthError extends Error {}

  function el(tag, props, ...kids) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(props || {})) {
      if (v === undefined || v === null) continue;
      if (k === 'class') e.className = v;
      else if (k === 'title') e.title = v;
      else if (k.startsWith('data-')) e.setAttribute(k, v);
      else e[k] = v;
    }
    for (const k of kids) {
      if (k === undefined || k === null) continue;
      e.append(k instanceof Node ? k : document.createTextNode(String(k)));
    }
    return e;
  }

  function badge(text, cls, title) {
    return el('span', { class: 'badge ' + (cls || text), title }, text);
  }

  function ago(ms, now) {
    const s = Math.max(0, Math.round((now - ms) / 1000));
    if (s < 60) return s + ' s ago';
    if (s < 3600) return Math.floor(s / 60) + ' min ago';
    if (s < 86400) return Math.floor(s / 3600) + ' h ago';
    return Math.floor(s / 86400) + ' d ago';
  }

  function span(ms) {
    if (ms < 1000) return ms + ' ms';
    if (ms < 60000) return (ms / 1000).toFixed(1) + ' s';
    return Math.floor(ms / 60000) + ' min ' + Math.floor((ms % 60000) / 1000) + ' s';
  }

  function bytes(n) {
    if (n < 1024) return n + ' B';
    const u = ['KiB', 'MiB', 'GiB', 'TiB'];
    let i = -1;
    do { n /= 1024; i++; } while (n >= 1024 && i < u.length - 1);
    return n.toFixed(1) + ' ' + u[i];
  }

  async function api(path, signal) {
    const r = await fetch(path, {
      headers: { Authorization: 'Bearer ' + token },
      cache: 'no-store',
      credentials: 'omit',
      signal,
    });
    if (r.status === 401) throw new AuthError('the API refused this token');
    if (!r.ok) {
      let msg = 'HTTP ' + r.status;
      try { msg = (await r.json()).error.message || msg; } catch (_) { /* not JSON */ }
      throw new Error(msg);
    }
    return r.json();
  }

  function fill(tbody, rows, cols, empty) {
    const body = el('tbody', { id: tbody.id });
    if (rows.length === 0) {
      body.append(el('tr', { class: 'empty' }, el('td', { colSpan: cols }, empty)));
    } else {
      rows.forEach((r) => body.append(r));
    }
    tbody.replaceWith(body);
  }

  function renderHosts(o) {
    const rows = o.hosts.map((h) => el('tr', { 'data-host': h.name },
      el('td', { class: 'name' }, h.name, h.leader ? ' (leader)' : '', h.self ? ' *' : ''),
      el('td', {}, h.group),
      el('td', { class: 'state' }, badge(h.state)),
      el('td', { class: 'num' }, span(Math.max(0, h.lease_age_ms))),
      el('td', { class: 'num owned' }, h.owned_nodes),
      el('td', { class: 'num' }, h.artifacts_held)));
    fill($('hosts'), rows, 6, 'no hosts');
    const u = $('unreachable');
    if (o.unreachable.length) {
      u.textContent = 'Boot records not read from: ' +
        o.unreachable.map((h) => h.host + ' (' + (h.error || 'no answer') + ')').join(', ');
      u.hidden = false;
    } else {
      u.hidden = true;
    }
  }

  function renderNodes(o) {
    const rows = o.nodes.map((n) => {
      const last = n.last;
      const stage = last ? last.stage + ' ' + last.status + ' on ' + last.host : '-';
      const boot = n.stuck
        ? badge('stuck', 'stuck', n.stuck.kind + ': ' + n.stuck.reason)
        : (last ? badge(last.status === 'ok' ? 'ok' : last.status, last.status === 'ok' ? 'booted' : 'error') : '');
      return el('tr', { 'data-node': n.id },
        el('td', { class: 'id', title: n.macs.join(', ') }, n.id),
        el('td', { class: 'owner' }, n.owner),
        el('td', { class: 'num epoch' }, n.epoch),
        el('td', { class: 'handoff' }, n.handoff === 'none' ? '-' : badge(n.handoff, 'migrating')),
        el('td', {}, n.provision_state),
        el('td', {}, n.profile),
        el('td', { class: 'stage', title: last && last.path ? last.path : '' }, stage),
        el('td', { class: 'when' }, last ? ago(last.at, o.now) : '-'),
        el('td', { class: 'boot' }, boot));
    });
    fill($('nodes'), rows, 9, query ? 'no node matches' : 'no nodes');
    $('node-count').textContent = query
      ? o.nodes_matched + ' of ' + o.nodes_total + ' match'
      : o.nodes_total + ' in all' + (o.nodes.length < o.nodes_total ? ', first ' + o.nodes.length + ' shown' : '');
  }

  function renderTransfers(o) {
    const rows = o.transfers.map((t) => el('tr', {},
      el('td', {}, t.host),
      el('td', {}, t.node || '-'),
      el('td', {}, t.proto),
      el('td', {}, t.path),
      el('td', {}, t.client),
      el('td', {}, t.sent !== null && t.sent !== undefined
        ? el('progress', { max: Math.max(1, t.size), value: t.sent, title: bytes(t.sent) + ' of ' + bytes(t.size) })
        : bytes(t.size)),
      el('td', { class: 'num' }, span(Math.max(0, o.now - t.started)))));
    fill($('transfers'), rows, 7, 'none');
  }

  function renderEvents(o) {
    const list = el('ol', { id: 'events', reversed: true });
    o.events.slice().reverse().forEach((e) => {
      const data = Object.entries(e.data || {})
        .filter(([, v]) => v !== null && typeof v !== 'object')
        .map(([k, v]) => k + '=' + v).join(' ');
      list.append(el('li', { 'data-seq': e.seq },
        el('span', { class: 'muted' }, '#' + e.seq + ' ' + new Date(e.at).toISOString().replace('T', ' ').slice(0, 19) + ' '),
        el('span', { class: 'kind' }, e.kind),
        e.node ? ' node=' + e.node : '',
        e.host ? ' host=' + e.host : '',
        data ? ' ' + data : ''));
    });
    if (!o.events.length) list.append(el('li', { class: 'muted' }, 'no events yet'));
    $('events').replaceWith(list);
  }

  function setLive(ok, text) {
    const b = $('live');
    b.className = 'badge ' + (ok ? 'live' : 'stale');
    b.textContent = text;
  }

  async function refresh() {
    clearTimeout(timer);
    if (!token) return;
    if (inflight) inflight.abort();
    const ctl = new AbortController();
    inflight = ctl;
    const gen = generation;
    try {
      const q = new URLSearchParams({ limit: '500' });
      if (query) q.set('q', query);
      const o = await api('/v1/overview?' + q, ctl.signal);
      if (gen !== generation) return;
      $('where').textContent = 'as seen by ' + o.host;
      renderHosts(o);
      renderNodes(o);
      renderTransfers(o);
      renderEvents(o);
      lastEvent = o.last_event;
      setLive(true, 'live, ' + new Date(o.now).toLocaleTimeString());
    } catch (e) {
      if (e.name === 'AbortError') return;
      if (e instanceof AuthError) { logout(e.message); return; }
      setLive(false, 'stale: ' + e.message);
    } finally {
      if (inflight === ctl) inflight = null;
      if (token && gen === generation) timer = setTimeout(refresh, REFRESH_MS);
    }
  }

  // Long-polls the event feed: a change shows at once, not at the next tick.
  async function follow(gen) {
    while (token && gen === generation) {
      try {
        const p = await api('/v1/events?since=' + lastEvent + '&wait=25&limit=100');
        if (gen !== generation) return;
        if (p.events.length) {
          lastEvent = p.last;
          refresh();
        }
      } catch (e) {
        if (e instanceof AuthError) return;
        await new Promise((r) => setTimeout(r, REFRESH_MS));
      }
    }
  }

  function logout(why) {
    token = null;
    generation++;
    clearTimeout(timer);
    if (inflight) inflight.abort();
    $('fleet').hidden = true;
    $('logout').hidden = true;
    $('login-panel').hidden = false;
    ['hosts', 'nodes', 'transfers'].forEach((id) => fill($(id), [], 1, ''));
    $('events').replaceWith(el('ol', { id: 'events', reversed: true }));
    $('where').textContent = '';
    setLive(false, 'not connected');
    const err = $('login-error');
    err.hidden = !why;
    err.textContent = why || '';
  }

  $('login').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const t = $('token').value.trim();
    $('token').value = '';
    if (!t) return;
    token = t;
    generation++;
    $('login-error').hidden = true;
    $('login-panel').hidden = true;
    $('fleet').hidden = false;
    $('logout').hidden = false;
    refresh().then(() => follow(generation));
  });
  $('logout').addEventListener('click', () => logout(''));
  let debounce = null;
  $('search').addEventListener('input', () => {
    clearTimeout(debounce);
    debounce = setTimeout(() => { query = $('search').value.trim(); refresh(); }, 150);
  });
})();
