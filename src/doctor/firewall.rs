//! Would this host's packet filter drop a PXE client's UDP datagram to one of our ports?
//!
//! The rulesets (`nft -j list ruleset`, `iptables-save`) are parsed into one small model
//! and evaluated for a new UDP/IPv4 datagram arriving from the network on a given port.
//! Conditions the model cannot decide (source addresses, rate limits, unknown matches)
//! make the answer "uncertain" rather than a guess: the check then warns and names the
//! rule.

use std::collections::{BTreeMap, HashMap};

use serde_json::Value;

/// A condition of a rule, as far as it matters for a new UDP/IPv4 datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cond {
    /// Destination port in (or, negated, not in) a set; `None`: a set we cannot read.
    Dport {
        /// `!=` / `!`.
        negate: bool,
        /// Inclusive ranges.
        ports: Option<Vec<(u16, u16)>>,
    },
    /// Layer-4 protocol in a list of names (`udp`, `tcp`, `17`...).
    Proto {
        /// `!=` / `!`.
        negate: bool,
        /// Lower-case names or numbers.
        names: Vec<String>,
    },
    /// Never true for a UDP/IPv4 datagram (a TCP port, an IPv6 header field...).
    Never,
    /// Conntrack state in a list (`new`, `established`...).
    CtState {
        /// `!=` / `!`.
        negate: bool,
        /// Lower-case states.
        states: Vec<String>,
    },
    /// Input interface name in a list.
    Iface {
        /// `!=` / `!`.
        negate: bool,
        /// Names (`+` suffix: prefix match, as in iptables).
        names: Vec<String>,
    },
    /// Anything else: the model cannot tell whether it matches.
    Unknown(String),
}

/// What a rule does when it matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Accept (final for this base chain).
    Accept,
    /// Drop or reject.
    Drop,
    /// Evaluate another chain, then come back.
    Jump(String),
    /// Continue in another chain, not coming back.
    Goto(String),
    /// Back to the calling chain.
    Return,
    /// No verdict (counter, log): next rule.
    Next,
    /// A verdict the model does not follow (queue to user space...).
    Unknown(String),
}

/// One rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// How the operator would recognise it.
    pub text: String,
    /// All must hold.
    pub conds: Vec<Cond>,
    /// What it does.
    pub verdict: Verdict,
}

/// One chain; base chains on the input hook have a policy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Chain {
    /// `Some(accept?)` for a base chain on the IPv4 input path.
    pub input_policy: Option<bool>,
    /// Rules in order.
    pub rules: Vec<Rule>,
}

/// One table (nft table or iptables `filter`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Table {
    /// E.g. `nft inet filter` or `iptables filter`.
    pub name: String,
    /// Chains by name.
    pub chains: BTreeMap<String, Chain>,
}

/// The datagram being judged.
#[derive(Debug, Clone)]
pub struct Packet<'a> {
    /// Destination port.
    pub port: u16,
    /// Interfaces it may arrive on (`dhcp.interfaces`); empty: any.
    pub ifaces: &'a [String],
}

/// Outcome for one base chain (or a whole ruleset).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Flow {
    /// Accepted.
    Accept,
    /// Dropped, by this rule (or policy).
    Drop(String),
    /// Depends on something the model cannot decide.
    Uncertain(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tri {
    Yes,
    No,
    Maybe,
}

fn port_in(port: u16, set: &[(u16, u16)]) -> bool {
    set.iter().any(|&(a, b)| (a..=b).contains(&port))
}

fn cond(c: &Cond, p: &Packet<'_>) -> Tri {
    let tri = |b: bool, negate: bool| if b != negate { Tri::Yes } else { Tri::No };
    match c {
        Cond::Dport {
            negate,
            ports: Some(s),
        } => tri(port_in(p.port, s), *negate),
        Cond::Dport { ports: None, .. } => Tri::Maybe,
        Cond::Proto { negate, names } => {
            tri(names.iter().any(|n| n == "udp" || n == "17"), *negate)
        }
        Cond::Never => Tri::No,
        Cond::CtState { negate, states } => tri(states.iter().any(|s| s == "new"), *negate),
        Cond::Iface { negate, names } => {
            let hit = |i: &str| {
                names.iter().any(|n| match n.strip_suffix('+') {
                    Some(pre) => i.starts_with(pre),
                    None => n == i,
                })
            };
            // PXE clients never arrive on loopback.
            if names.iter().all(|n| n == "lo") {
                return tri(false, *negate);
            }
            if p.ifaces.is_empty() {
                return Tri::Maybe;
            }
            let n = p.ifaces.iter().filter(|i| hit(i)).count();
            if n == p.ifaces.len() {
                tri(true, *negate)
            } else if n == 0 {
                tri(false, *negate)
            } else {
                Tri::Maybe
            }
        }
        Cond::Unknown(_) => Tri::Maybe,
    }
}

/// Most rule visits in one evaluation: rules whose match is uncertain fork it, so a
/// pathological ruleset could take exponential time.
const BUDGET: usize = 20_000;

struct Eval<'a> {
    table: &'a Table,
    packet: &'a Packet<'a>,
    budget: usize,
}

/// Chain name and next rule index, innermost last.
type Stack = Vec<(String, usize)>;

impl Eval<'_> {
    fn run(&mut self, mut stack: Stack, policy: &Flow) -> Flow {
        loop {
            let Some((name, i)) = stack.last().cloned() else {
                return policy.clone();
            };
            let Some(chain) = self.table.chains.get(&name) else {
                return Flow::Uncertain(format!(
                    "jump to chain `{name}`, which is not in the ruleset"
                ));
            };
            let Some(rule) = chain.rules.get(i) else {
                stack.pop();
                continue;
            };
            if self.budget == 0 {
                return Flow::Uncertain("ruleset too complex to evaluate".into());
            }
            self.budget -= 1;
            if stack.len() > 32 {
                return Flow::Uncertain("chains nested more than 32 deep".into());
            }
            if let Some(top) = stack.last_mut() {
                top.1 += 1;
            }
            let m = rule
                .conds
                .iter()
                .map(|c| cond(c, self.packet))
                .fold(Tri::Yes, |a, b| match (a, b) {
                    (Tri::No, _) | (_, Tri::No) => Tri::No,
                    (Tri::Maybe, _) | (_, Tri::Maybe) => Tri::Maybe,
                    _ => Tri::Yes,
                });
            match m {
                Tri::No => {}
                Tri::Yes => {
                    if let Some(f) = self.step(rule, &mut stack) {
                        return f;
                    }
                }
                // A rule that decides nothing changes nothing, matched or not.
                Tri::Maybe if rule.verdict == Verdict::Next => {}
                Tri::Maybe => {
                    let mut yes_stack = stack.clone();
                    let yes = match self.step(rule, &mut yes_stack) {
                        Some(f) => f,
                        None => self.run(yes_stack, policy),
                    };
                    let no = self.run(stack, policy);
                    return merge(yes, no, rule);
                }
            }
        }
    }

    /// Applies a matching rule: a final outcome, or `None` to go on with `stack`.
    fn step(&mut self, rule: &Rule, stack: &mut Stack) -> Option<Flow> {
        match &rule.verdict {
            Verdict::Accept => Some(Flow::Accept),
            Verdict::Drop => Some(Flow::Drop(format!("rule `{}`", rule.text))),
            Verdict::Next => None,
            Verdict::Return => {
                stack.pop();
                None
            }
            Verdict::Jump(c) => {
                stack.push((c.clone(), 0));
                None
            }
            Verdict::Goto(c) => {
                stack.pop();
                stack.push((c.clone(), 0));
                None
            }
            Verdict::Unknown(v) => Some(Flow::Uncertain(format!(
                "rule `{}` ends in `{v}`, which doctor does not follow",
                rule.text
            ))),
        }
    }
}

fn merge(yes: Flow, no: Flow, rule: &Rule) -> Flow {
    match (&yes, &no) {
        (Flow::Accept, Flow::Accept) => return yes,
        (Flow::Drop(a), Flow::Drop(b)) if a == b => return yes,
        (Flow::Drop(a), Flow::Drop(b)) => return Flow::Drop(format!("{a} or {b}")),
        _ => {}
    }
    let say = |f: &Flow| match f {
        Flow::Accept => "accepted".to_string(),
        Flow::Drop(by) => format!("dropped by {by}"),
        Flow::Uncertain(why) => format!("uncertain ({why})"),
    };
    let (a, b) = (say(&yes), say(&no));
    let mut text = format!("{a} if `{}` matches, else {b}", rule.text);
    if text.len() > 400 {
        text.truncate(400);
        text.push('…');
    }
    Flow::Uncertain(text)
}

/// Evaluates every IPv4 input base chain of `table` for `packet`; the first chain that
/// drops (or is uncertain) decides, since a datagram must pass all of them.
pub fn evaluate(table: &Table, packet: &Packet<'_>) -> Flow {
    let mut worst = Flow::Accept;
    for (name, chain) in &table.chains {
        let Some(accept) = chain.input_policy else {
            continue;
        };
        let policy = if accept {
            Flow::Accept
        } else {
            Flow::Drop(format!("the drop policy of chain `{name}`"))
        };
        let mut ev = Eval {
            table,
            packet,
            budget: BUDGET,
        };
        let f = match ev.run(vec![(name.clone(), 0)], &policy) {
            Flow::Drop(by) => Flow::Drop(format!("{by} ({}, chain {name})", table.name)),
            Flow::Uncertain(w) => Flow::Uncertain(format!("{w} ({}, chain {name})", table.name)),
            Flow::Accept => Flow::Accept,
        };
        match (&worst, &f) {
            (Flow::Drop(_), _) => {}
            (_, Flow::Drop(_)) => worst = f,
            (Flow::Uncertain(_), _) => {}
            (_, Flow::Uncertain(_)) => worst = f,
            _ => {}
        }
    }
    worst
}

/// Why a ruleset could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ParseError(pub String);

// ---- nft -j list ruleset

/// Port ranges of an nft named set, by name.
type SetLookup<'a> = dyn Fn(&str) -> Option<Vec<(u16, u16)>> + 'a;

/// Tables of `nft -j list ruleset` that see IPv4 input (`ip`, `inet`), and the names of
/// tables managed by iptables-nft (they hold opaque `xt` expressions that
/// `iptables-save` shows better).
pub fn parse_nft(json: &str) -> Result<(Vec<Table>, Vec<String>), ParseError> {
    let v: Value = serde_json::from_str(json).map_err(|e| ParseError(format!("nft JSON: {e}")))?;
    let items = v["nftables"]
        .as_array()
        .ok_or_else(|| ParseError("nft JSON without an `nftables` list".into()))?;
    let key = |o: &Value| {
        (
            o["family"].as_str().unwrap_or("").to_string(),
            o["table"].as_str().unwrap_or("").to_string(),
        )
    };
    let mut sets: HashMap<(String, String, String), Vec<(u16, u16)>> = HashMap::new();
    let mut tables: BTreeMap<(String, String), Table> = BTreeMap::new();
    let mut xt_tables = Vec::new();
    for it in items {
        if let Some(s) = it.get("set") {
            let (f, t) = key(s);
            let name = s["name"].as_str().unwrap_or("").to_string();
            let elems = s["elem"].as_array().cloned().unwrap_or_default();
            if let Some(ports) = ports_of(&Value::Array(elems)) {
                sets.insert((f, t, name), ports);
            }
        }
    }
    for it in items {
        if let Some(c) = it.get("chain") {
            let (f, t) = key(c);
            if f != "ip" && f != "inet" {
                continue;
            }
            let table = tables
                .entry((f.clone(), t.clone()))
                .or_insert_with(|| Table {
                    name: format!("nft table {f} {t}"),
                    chains: BTreeMap::new(),
                });
            let base = c["hook"].as_str() == Some("input") && c["type"].as_str() == Some("filter");
            table.chains.insert(
                c["name"].as_str().unwrap_or("").to_string(),
                Chain {
                    input_policy: base.then(|| c["policy"].as_str() != Some("drop")),
                    rules: Vec::new(),
                },
            );
        } else if let Some(r) = it.get("rule") {
            let (f, t) = key(r);
            let Some(table) = tables.get_mut(&(f.clone(), t.clone())) else {
                continue;
            };
            let exprs = r["expr"].as_array().cloned().unwrap_or_default();
            if exprs.iter().any(|e| e.get("xt").is_some()) && !xt_tables.contains(&t) {
                xt_tables.push(t.clone());
            }
            let set_of = |name: &str| sets.get(&(f.clone(), t.clone(), name.to_string())).cloned();
            let rules = nft_rules(&exprs, &set_of);
            if let Some(ch) = table.chains.get_mut(r["chain"].as_str().unwrap_or("")) {
                ch.rules.extend(rules);
            }
        }
    }
    Ok((tables.into_values().collect(), xt_tables))
}

/// Port ranges of a JSON value (number, `{"range":[a,b]}`, list or `{"set":[...]}`).
fn ports_of(v: &Value) -> Option<Vec<(u16, u16)>> {
    let one = |x: &Value| -> Option<u16> {
        match x {
            Value::Number(n) => n.as_u64().and_then(|n| u16::try_from(n).ok()),
            Value::String(s) => match s.as_str() {
                "bootps" => Some(67),
                "bootpc" => Some(68),
                "tftp" => Some(69),
                s => s.parse().ok(),
            },
            _ => None,
        }
    };
    match v {
        Value::Array(a) => {
            let mut out = Vec::new();
            for x in a {
                out.extend(ports_of(x)?);
            }
            Some(out)
        }
        Value::Object(o) => {
            if let Some(s) = o.get("set") {
                return ports_of(s);
            }
            if let Some(Value::Array(r)) = o.get("range") {
                return Some(vec![(one(r.first()?)?, one(r.get(1)?)?)]);
            }
            // An element with a timeout or comment: {"elem": {"val": 69, ...}}.
            if let Some(e) = o.get("elem") {
                return ports_of(&e["val"]);
            }
            None
        }
        x => one(x).map(|p| vec![(p, p)]),
    }
}

/// Lower-case strings of a JSON value (string, list, `{"set":[...]}`).
fn strings_of(v: &Value) -> Option<Vec<String>> {
    match v {
        Value::String(s) => Some(vec![s.to_ascii_lowercase()]),
        Value::Number(n) => Some(vec![n.to_string()]),
        Value::Array(a) => {
            let mut out = Vec::new();
            for x in a {
                out.extend(strings_of(x)?);
            }
            Some(out)
        }
        Value::Object(o) => o.get("set").and_then(strings_of),
        _ => None,
    }
}

/// What a match's left-hand side is.
enum Left {
    Dport,
    Proto,
    Never,
    CtState,
    Iface,
    Other(String),
}

fn left_of(l: &Value) -> Left {
    if let Some(p) = l.get("payload") {
        let proto = p["protocol"].as_str().unwrap_or("");
        let field = p["field"].as_str().unwrap_or("");
        return match (proto, field) {
            ("udp" | "th", "dport") => Left::Dport,
            ("ip", "protocol") => Left::Proto,
            (
                "tcp" | "icmp" | "icmpv6" | "sctp" | "dccp" | "udplite" | "ah" | "esp" | "ip6"
                | "comp" | "igmp" | "arp" | "vlan",
                _,
            ) => Left::Never,
            _ => Left::Other(format!("{proto} {field}")),
        };
    }
    if let Some(m) = l.get("meta") {
        return match m["key"].as_str().unwrap_or("") {
            "l4proto" => Left::Proto,
            "iifname" | "iif" => Left::Iface,
            k => Left::Other(format!("meta {k}")),
        };
    }
    if let Some(c) = l.get("ct") {
        if c["key"].as_str() == Some("state") && c.get("dir").is_none() {
            return Left::CtState;
        }
        return Left::Other(format!("ct {}", c["key"].as_str().unwrap_or("?")));
    }
    Left::Other(short(l))
}

fn short(v: &Value) -> String {
    let mut s = v.to_string();
    if s.len() > 60 {
        s.truncate(60);
        s.push('…');
    }
    s
}

fn nft_cond(m: &Value, set_of: &SetLookup<'_>) -> Cond {
    let negate = match m["op"].as_str() {
        Some("==") | Some("in") => false,
        Some("!=") => true,
        op => return Cond::Unknown(format!("match with operator {op:?}")),
    };
    let right = &m["right"];
    match left_of(&m["left"]) {
        Left::Dport => {
            let ports = match right.as_str().and_then(|s| s.strip_prefix('@')) {
                Some(name) => set_of(name),
                None => ports_of(right),
            };
            Cond::Dport { negate, ports }
        }
        Left::Proto => match strings_of(right) {
            Some(names) => Cond::Proto { negate, names },
            None => Cond::Unknown(format!("protocol {}", short(right))),
        },
        Left::Never => Cond::Never,
        Left::CtState => match strings_of(right) {
            Some(states) => Cond::CtState { negate, states },
            None => Cond::Unknown(format!("ct state {}", short(right))),
        },
        Left::Iface => match right.as_str().filter(|s| !s.starts_with('@')) {
            // nft writes a prefix match as `eth*`.
            Some(n) => Cond::Iface {
                negate,
                names: vec![n.replace('*', "+")],
            },
            None => match strings_of(right) {
                Some(names) => Cond::Iface { negate, names },
                None => Cond::Unknown(format!("interface {}", short(right))),
            },
        },
        Left::Other(what) => Cond::Unknown(what),
    }
}

fn nft_verdict(e: &Value) -> Option<Verdict> {
    let o = e.as_object()?;
    let (k, v) = o.iter().next()?;
    Some(match k.as_str() {
        "accept" => Verdict::Accept,
        "drop" | "reject" => Verdict::Drop,
        "return" => Verdict::Return,
        "continue" => Verdict::Next,
        "jump" => Verdict::Jump(v["target"].as_str()?.to_string()),
        "goto" => Verdict::Goto(v["target"].as_str()?.to_string()),
        "queue" => Verdict::Unknown("queue".into()),
        "xt" if v["type"].as_str() == Some("target") => match v["name"].as_str()? {
            "REJECT" | "DROP" => Verdict::Drop,
            "ACCEPT" => Verdict::Accept,
            "RETURN" => Verdict::Return,
            _ => return None,
        },
        _ => return None,
    })
}

/// One nft rule, or several when it ends in a verdict map (one per entry).
fn nft_rules(exprs: &[Value], set_of: &SetLookup<'_>) -> Vec<Rule> {
    let mut conds = Vec::new();
    let mut verdict = Verdict::Next;
    let mut words = Vec::new();
    let mut vmap = None;
    for e in exprs {
        if let Some(m) = e.get("match") {
            let c = nft_cond(m, set_of);
            words.push(describe(&c));
            conds.push(c);
        } else if let Some(x) = e.get("xt") {
            if x["type"].as_str() == Some("match") {
                let name = x["name"].as_str().unwrap_or("?");
                if name != "comment" {
                    conds.push(Cond::Unknown(format!("iptables match {name}")));
                    words.push(format!("-m {name}"));
                }
            } else if let Some(v) = nft_verdict(e) {
                words.push(format!("{v:?}").to_lowercase());
                verdict = v;
            }
        } else if let Some(v) = e.get("vmap") {
            vmap = Some(v.clone());
        } else if let Some(v) = nft_verdict(e) {
            words.push(verdict_word(&v));
            verdict = v;
        } else if let Some(k) = e.as_object().and_then(|o| o.keys().next()) {
            // Statements that stop nothing but may not match every packet.
            if k == "limit" || k == "quota" {
                conds.push(Cond::Unknown(k.clone()));
                words.push(k.clone());
            }
        }
    }
    let text = words.join(" ");
    let Some(vm) = vmap else {
        return vec![Rule {
            text,
            conds,
            verdict,
        }];
    };
    // `KEY vmap { a : v1, b : v2 }` = one rule per entry, each with `KEY == a`.
    let left = left_of(&vm["key"]);
    let entries = vm["data"]["set"].as_array().cloned().unwrap_or_default();
    let mut out = Vec::new();
    for en in entries {
        let (Some(k), Some(v)) = (en.get(0), en.get(1).and_then(nft_verdict)) else {
            continue;
        };
        let c = match &left {
            Left::Dport => Cond::Dport {
                negate: false,
                ports: ports_of(k),
            },
            Left::CtState => Cond::CtState {
                negate: false,
                states: strings_of(k).unwrap_or_default(),
            },
            Left::Proto => Cond::Proto {
                negate: false,
                names: strings_of(k).unwrap_or_default(),
            },
            Left::Iface => Cond::Iface {
                negate: false,
                names: strings_of(k).unwrap_or_default(),
            },
            Left::Never => Cond::Never,
            Left::Other(w) => Cond::Unknown(w.clone()),
        };
        let mut cs = conds.clone();
        let d = describe(&c);
        cs.push(c);
        out.push(Rule {
            text: format!("{text} {d} : {}", verdict_word(&v))
                .trim()
                .to_string(),
            conds: cs,
            verdict: v,
        });
    }
    out
}

fn verdict_word(v: &Verdict) -> String {
    match v {
        Verdict::Accept => "accept".into(),
        Verdict::Drop => "drop".into(),
        Verdict::Jump(c) => format!("jump {c}"),
        Verdict::Goto(c) => format!("goto {c}"),
        Verdict::Return => "return".into(),
        Verdict::Next => "continue".into(),
        Verdict::Unknown(w) => w.clone(),
    }
}

fn describe(c: &Cond) -> String {
    let not = |n: bool| if n { "!= " } else { "" };
    let list = |v: &[String]| v.join(",");
    match c {
        Cond::Dport {
            negate,
            ports: Some(p),
        } => {
            let ps: Vec<String> = p
                .iter()
                .map(|&(a, b)| {
                    if a == b {
                        a.to_string()
                    } else {
                        format!("{a}-{b}")
                    }
                })
                .collect();
            format!("udp dport {}{}", not(*negate), ps.join(","))
        }
        Cond::Dport { negate, .. } => format!("udp dport {}@set", not(*negate)),
        Cond::Proto { negate, names } => format!("l4proto {}{}", not(*negate), list(names)),
        Cond::Never => "non-udp match".into(),
        Cond::CtState { negate, states } => format!("ct state {}{}", not(*negate), list(states)),
        Cond::Iface { negate, names } => format!("iifname {}{}", not(*negate), list(names)),
        Cond::Unknown(w) => w.clone(),
    }
}

// ---- iptables-save

/// The `filter` table of `iptables-save` output (its INPUT chain and what it jumps to).
pub fn parse_iptables_save(text: &str, label: &str) -> Result<Option<Table>, ParseError> {
    let mut in_filter = false;
    let mut table: Option<Table> = None;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(t) = line.strip_prefix('*') {
            in_filter = t == "filter";
            if in_filter {
                table = Some(Table {
                    name: format!("{label} table filter"),
                    chains: BTreeMap::new(),
                });
            }
            continue;
        }
        if !in_filter || line == "COMMIT" {
            continue;
        }
        let Some(t) = table.as_mut() else { continue };
        if let Some(c) = line.strip_prefix(':') {
            let mut parts = c.split_whitespace();
            let name = parts.next().unwrap_or("").to_string();
            let policy = parts.next().unwrap_or("-");
            t.chains.insert(
                name.clone(),
                Chain {
                    input_policy: (name == "INPUT").then_some(policy != "DROP"),
                    rules: Vec::new(),
                },
            );
            continue;
        }
        let toks = tokenize(line);
        if toks.first().map(String::as_str) != Some("-A") || toks.len() < 2 {
            return Err(ParseError(format!("unexpected iptables-save line: {line}")));
        }
        let chain = toks[1].clone();
        let known: Vec<String> = t.chains.keys().cloned().collect();
        let rule = ipt_rule(&toks[2..], &known, line);
        t.chains.entry(chain).or_default().rules.push(rule);
    }
    Ok(table)
}

/// Splits on spaces, keeping double-quoted words whole.
fn tokenize(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut any = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' if quoted => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            '"' => {
                quoted = !quoted;
                any = true;
            }
            c if c.is_whitespace() && !quoted => {
                if any || !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                    any = false;
                }
            }
            c => cur.push(c),
        }
    }
    if any || !cur.is_empty() {
        out.push(cur);
    }
    out
}

fn ipt_ports(s: &str) -> Option<Vec<(u16, u16)>> {
    s.split(',')
        .map(|p| match p.split_once(':') {
            Some((a, b)) => Some((
                if a.is_empty() { 0 } else { a.parse().ok()? },
                if b.is_empty() { 65535 } else { b.parse().ok()? },
            )),
            None => {
                let v = ports_of(&Value::String(p.to_string()))?;
                v.first().copied()
            }
        })
        .collect()
}

fn ipt_rule(toks: &[String], chains: &[String], line: &str) -> Rule {
    let mut conds = Vec::new();
    let mut verdict = Verdict::Next;
    let mut negate = false;
    let mut i = 0;
    let val = |i: usize| toks.get(i + 1).cloned().unwrap_or_default();
    while i < toks.len() {
        let t = toks[i].as_str();
        match t {
            "!" => {
                negate = true;
                i += 1;
                continue;
            }
            "-p" | "--protocol" => {
                let p = val(i).to_ascii_lowercase();
                if p != "all" && p != "0" {
                    conds.push(Cond::Proto {
                        negate,
                        names: vec![p],
                    });
                }
                i += 2;
            }
            "--dport" | "--destination-port" | "--dports" | "--destination-ports" => {
                conds.push(Cond::Dport {
                    negate,
                    ports: ipt_ports(&val(i)),
                });
                i += 2;
            }
            "-i" | "--in-interface" => {
                conds.push(Cond::Iface {
                    negate,
                    names: vec![val(i)],
                });
                i += 2;
            }
            "--ctstate" | "--state" => {
                conds.push(Cond::CtState {
                    negate,
                    states: val(i).split(',').map(|s| s.to_ascii_lowercase()).collect(),
                });
                i += 2;
            }
            "-m" | "--match" | "--comment" => i += 2,
            "-j" | "--jump" | "-g" | "--goto" => {
                let target = val(i);
                verdict = match target.as_str() {
                    "ACCEPT" => Verdict::Accept,
                    "DROP" | "REJECT" => Verdict::Drop,
                    "RETURN" => Verdict::Return,
                    c if chains.iter().any(|k| k == c) => {
                        if t == "-g" || t == "--goto" {
                            Verdict::Goto(c.to_string())
                        } else {
                            Verdict::Jump(c.to_string())
                        }
                    }
                    // Non-terminating targets (LOG, MARK...) go on to the next rule.
                    "LOG" | "NFLOG" | "MARK" | "CONNMARK" | "TRACE" | "AUDIT" => Verdict::Next,
                    other => Verdict::Unknown(format!("-j {other}")),
                };
                // The rest are the target's own options.
                break;
            }
            opt if opt.starts_with('-') => {
                // Any other match option (source address, limit...): undecidable here.
                let mut j = i + 1;
                while j < toks.len() && !toks[j].starts_with('-') && toks[j] != "!" {
                    j += 1;
                }
                conds.push(Cond::Unknown(toks[i..j].join(" ")));
                i = j;
            }
            _ => i += 1,
        }
        negate = false;
    }
    // A port match from `-m udp`/`multiport` under `-p tcp` never sees UDP: the Proto
    // condition already says so.
    Rule {
        text: line.to_string(),
        conds,
        verdict,
    }
}

// ---- the check

/// Ruleset dumps as read from the tools; `None`: tool not installed, `Err`: it failed.
#[derive(Debug, Clone, Default)]
pub struct Dumps {
    /// `nft -j list ruleset`.
    pub nft: Option<Result<String, String>>,
    /// `iptables-save` of the nf_tables backend (the tables nft shows as `xt`).
    pub iptables_nft: Option<Result<String, String>>,
    /// `iptables-save` of the legacy backend (tables nft does not show).
    pub iptables_legacy: Option<Result<String, String>>,
}

/// The tables to evaluate, and why some could not be read.
fn tables(d: &Dumps) -> (Vec<Table>, Vec<String>) {
    let mut out = Vec::new();
    let mut problems = Vec::new();
    let ipt = |text: &str, label: &str, out: &mut Vec<Table>, problems: &mut Vec<String>| {
        match parse_iptables_save(text, label) {
            Ok(Some(t)) => out.push(t),
            Ok(None) => {}
            Err(e) => problems.push(format!("{label}: {e}")),
        }
    };
    match &d.nft {
        Some(Ok(json)) => match parse_nft(json) {
            Ok((ts, xt)) => {
                let ipt_ok = matches!(&d.iptables_nft, Some(Ok(_)));
                for t in ts {
                    // iptables-nft's own tables read better from iptables-save.
                    let managed = xt.iter().any(|x| t.name == format!("nft table ip {x}"));
                    if !(managed && ipt_ok) {
                        out.push(t);
                    }
                }
                if !xt.is_empty() {
                    if let Some(Ok(text)) = &d.iptables_nft {
                        ipt(text, "iptables", &mut out, &mut problems);
                    }
                }
            }
            Err(e) => problems.push(e.to_string()),
        },
        Some(Err(e)) => {
            problems.push(format!("nft: {e}"));
            if let Some(Ok(text)) = &d.iptables_nft {
                ipt(text, "iptables", &mut out, &mut problems);
            }
        }
        None => match &d.iptables_nft {
            Some(Ok(text)) => ipt(text, "iptables", &mut out, &mut problems),
            Some(Err(e)) => problems.push(format!("iptables-save: {e}")),
            None => {}
        },
    }
    match &d.iptables_legacy {
        Some(Ok(text)) => ipt(text, "iptables-legacy", &mut out, &mut problems),
        Some(Err(e)) => problems.push(format!("iptables-legacy-save: {e}")),
        None => {}
    }
    (out, problems)
}

/// One finding per UDP port (`(port, what)`): dropped (fail), uncertain (warn) or
/// accepted.
pub fn check(ports: &[(u16, &str)], ifaces: &[String], d: &Dumps) -> Vec<super::Finding> {
    use super::{Finding, Status};
    let (tables, problems) = tables(d);
    let nothing_read = d.nft.as_ref().is_none_or(|r| r.is_err())
        && d.iptables_nft.as_ref().is_none_or(|r| r.is_err())
        && d.iptables_legacy.as_ref().is_none_or(|r| r.is_err());
    if nothing_read {
        let why = if problems.is_empty() {
            "neither nft nor iptables-save is installed".to_string()
        } else {
            problems.join("; ")
        };
        return vec![Finding {
            name: "firewall".into(),
            status: Status::Warn,
            detail: format!("could not check: {why}"),
            fix: Some(
                "run doctor as root with nft (package nftables) or iptables installed".into(),
            ),
        }];
    }
    let mut out = Vec::new();
    if !problems.is_empty() {
        out.push(Finding {
            name: "firewall".into(),
            status: Status::Warn,
            detail: format!(
                "part of the ruleset could not be read: {}",
                problems.join("; ")
            ),
            fix: None,
        });
    }
    let mut seen = Vec::new();
    for &(port, what) in ports {
        if port == 0 || seen.contains(&port) {
            continue;
        }
        seen.push(port);
        let name = format!("firewall udp/{port} ({what})");
        let packet = Packet { port, ifaces };
        let mut worst = Flow::Accept;
        let mut base = 0;
        for t in &tables {
            base += t
                .chains
                .values()
                .filter(|c| c.input_policy.is_some())
                .count();
            let f = evaluate(t, &packet);
            match (&worst, &f) {
                (Flow::Drop(_), _) => {}
                (_, Flow::Drop(_)) => worst = f,
                (Flow::Uncertain(_), _) => {}
                (_, Flow::Uncertain(_)) => worst = f,
                _ => {}
            }
        }
        let fix = format!(
            "accept it on the provisioning interface, e.g. `nft add rule inet filter input udp dport {port} accept` (or the same in your firewall manager: ufw allow {port}/udp, firewall-cmd --add-port={port}/udp)"
        );
        out.push(match worst {
            Flow::Accept if base == 0 => {
                Finding::pass(name, "no input filter chains: nothing drops it".into())
            }
            Flow::Accept => Finding::pass(
                name,
                format!("accepted by the {base} input filter chain(s)"),
            ),
            Flow::Drop(by) => Finding {
                name,
                status: Status::Fail,
                detail: format!("a new datagram from a PXE client is dropped by {by}"),
                fix: Some(fix),
            },
            Flow::Uncertain(why) => Finding {
                name,
                status: Status::Warn,
                detail: format!("may be dropped: {why}"),
                fix: Some(fix),
            },
        });
    }
    out
}

/// Runs a ruleset dumper: `None` when it is not installed.
fn dump(tool: &str, args: &[&str]) -> Option<Result<String, String>> {
    let path = ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
        .iter()
        .map(|d| std::path::Path::new(d).join(tool))
        .find(|p| p.is_file())?;
    let out = crate::doctor::run_bounded(
        std::process::Command::new(path).args(args),
        std::time::Duration::from_secs(10),
    );
    Some(match out {
        Ok(o) if o.status.success() => Ok(String::from_utf8_lossy(&o.stdout).into_owned()),
        Ok(o) => Err(String::from_utf8_lossy(&o.stderr).trim().to_string()),
        Err(e) => Err(e),
    })
}

/// Reads the rulesets with whichever tools are installed.
pub fn gather() -> Dumps {
    let mut d = Dumps {
        nft: dump("nft", &["-j", "list", "ruleset"]),
        ..Default::default()
    };
    if let Some(r) = dump("iptables-save", &[]) {
        match r {
            Ok(t) if t.lines().next().is_some_and(|l| l.contains("(legacy)")) => {
                d.iptables_legacy = Some(Ok(t))
            }
            r => d.iptables_nft = Some(r),
        }
    }
    // Legacy tables exist only once the ip_tables module is in use; asking would load it.
    let legacy_in_use =
        std::fs::read_to_string("/proc/net/ip_tables_names").is_ok_and(|s| !s.trim().is_empty());
    if legacy_in_use && d.iptables_legacy.is_none() {
        d.iptables_legacy = dump("iptables-legacy-save", &[]);
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(t: &Table, port: u16) -> Flow {
        evaluate(t, &Packet { port, ifaces: &[] })
    }

    /// Captured from `nft -j list ruleset` (nftables 1.0.6) of a ruleset written to
    /// exercise sets, ranges, vmaps, interfaces, limits and jumps.
    const NFT: &str = r#"{"nftables": [{"metainfo": {"version": "1.0.6"}},
 {"table": {"family": "inet", "name": "filter", "handle": 1}},
 {"set": {"family": "inet", "name": "allowed", "table": "filter", "type": "inet_service", "handle": 3, "elem": [4011]}},
 {"chain": {"family": "inet", "table": "filter", "name": "input", "handle": 1, "type": "filter", "hook": "input", "prio": 0, "policy": "drop"}},
 {"chain": {"family": "inet", "table": "filter", "name": "mychain", "handle": 2}},
 {"rule": {"family": "inet", "table": "filter", "chain": "input", "expr": [{"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": ["established", "related"]}}, {"accept": null}]}},
 {"rule": {"family": "inet", "table": "filter", "chain": "input", "expr": [{"vmap": {"key": {"ct": {"key": "state"}}, "data": {"set": [["invalid", {"drop": null}], ["established", {"accept": null}]]}}}]}},
 {"rule": {"family": "inet", "table": "filter", "chain": "input", "expr": [{"match": {"op": "==", "left": {"meta": {"key": "iif"}}, "right": "lo"}}, {"accept": null}]}},
 {"rule": {"family": "inet", "table": "filter", "chain": "input", "expr": [{"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "eth1"}}, {"match": {"op": "==", "left": {"payload": {"protocol": "udp", "field": "dport"}}, "right": 67}}, {"accept": null}]}},
 {"rule": {"family": "inet", "table": "filter", "chain": "input", "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "udp", "field": "dport"}}, "right": {"set": [69, {"range": [5000, 5010]}]}}}, {"counter": {"packets": 0, "bytes": 0}}, {"accept": null}]}},
 {"rule": {"family": "inet", "table": "filter", "chain": "input", "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "udp", "field": "dport"}}, "right": "@allowed"}}, {"accept": null}]}},
 {"rule": {"family": "inet", "table": "filter", "chain": "input", "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": 22}}, {"accept": null}]}},
 {"rule": {"family": "inet", "table": "filter", "chain": "input", "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "udp", "field": "dport"}}, "right": 7000}}, {"limit": {"rate": 10, "burst": 5, "per": "second"}}, {"accept": null}]}},
 {"rule": {"family": "inet", "table": "filter", "chain": "input", "expr": [{"jump": {"target": "mychain"}}]}},
 {"rule": {"family": "inet", "table": "filter", "chain": "input", "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": {"prefix": {"addr": "10.0.0.0", "len": 8}}}}, {"drop": null}]}},
 {"rule": {"family": "inet", "table": "filter", "chain": "input", "expr": [{"match": {"op": "!=", "left": {"payload": {"protocol": "udp", "field": "dport"}}, "right": 53}}, {"reject": {"type": "icmpx", "expr": "port-unreachable"}}]}},
 {"rule": {"family": "inet", "table": "filter", "chain": "mychain", "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "udp", "field": "dport"}}, "right": 68}}, {"return": null}]}},
 {"rule": {"family": "inet", "table": "filter", "chain": "mychain", "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "udp", "field": "dport"}}, "right": 67}}, {"drop": null}]}},
 {"rule": {"family": "inet", "table": "filter", "chain": "mychain", "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "udp", "field": "dport"}}, "right": 6000}}, {"accept": null}]}}
]}"#;

    #[test]
    fn nft_sets_ranges_jumps_and_uncertain_conditions() {
        let (tables, xt) = parse_nft(NFT).unwrap();
        assert!(xt.is_empty());
        let t = &tables[0];
        assert_eq!(flow(t, 69), Flow::Accept);
        assert_eq!(flow(t, 5005), Flow::Accept);
        assert_eq!(flow(t, 4011), Flow::Accept, "named set");
        assert_eq!(
            flow(t, 6000),
            Flow::Accept,
            "accepted in the jumped-to chain"
        );
        // 67: only on eth1 (unknown here), else dropped in mychain.
        let f = flow(t, 67);
        assert!(
            matches!(&f, Flow::Uncertain(w) if w.contains("eth1") && w.contains("dropped")),
            "{f:?}"
        );
        // ... but certain when the DHCP interface is eth1.
        let eth1 = ["eth1".to_string()];
        assert_eq!(
            evaluate(
                t,
                &Packet {
                    port: 67,
                    ifaces: &eth1
                }
            ),
            Flow::Accept
        );
        let eth0 = ["eth0".to_string()];
        let f = evaluate(
            t,
            &Packet {
                port: 67,
                ifaces: &eth0,
            },
        );
        assert!(
            matches!(&f, Flow::Drop(by) if by.contains("dport 67")),
            "{f:?}"
        );
        // 7000: rate-limited accept, then source-address drop, then reject.
        assert!(matches!(flow(t, 7000), Flow::Uncertain(_)));
        // 53 gets past the reject only if not from 10/8: the rest is the drop policy.
        let f = flow(t, 53);
        assert!(
            matches!(&f, Flow::Drop(by) if by.contains("policy")),
            "{f:?}"
        );
    }

    #[test]
    fn nft_accept_policy_and_plain_drop() {
        let j = r#"{"nftables": [{"table": {"family": "inet", "name": "t"}},
          {"chain": {"family": "inet", "table": "t", "name": "c", "type": "filter", "hook": "input", "prio": 0, "policy": "accept"}},
          {"rule": {"family": "inet", "table": "t", "chain": "c", "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "udp", "field": "dport"}}, "right": 69}}, {"drop": null}]}},
          {"table": {"family": "ip6", "name": "v6"}},
          {"chain": {"family": "ip6", "table": "v6", "name": "c", "type": "filter", "hook": "input", "prio": 0, "policy": "drop"}}]}"#;
        let (tables, _) = parse_nft(j).unwrap();
        assert_eq!(tables.len(), 1, "ip6 tables never see IPv4");
        assert!(matches!(flow(&tables[0], 69), Flow::Drop(_)));
        assert_eq!(flow(&tables[0], 67), Flow::Accept);
    }

    #[test]
    fn nft_iptables_compat_tables_are_reported() {
        let j = r#"{"nftables": [{"table": {"family": "ip", "name": "filter"}},
          {"chain": {"family": "ip", "table": "filter", "name": "INPUT", "type": "filter", "hook": "input", "prio": 0, "policy": "drop"}},
          {"rule": {"family": "ip", "table": "filter", "chain": "INPUT", "expr": [{"xt": {"type": "match", "name": "multiport"}}, {"accept": null}]}}]}"#;
        let (tables, xt) = parse_nft(j).unwrap();
        assert_eq!(xt, vec!["filter".to_string()]);
        assert!(matches!(flow(&tables[0], 69), Flow::Uncertain(_)));
    }

    /// Captured from `iptables-save` (iptables 1.8.9).
    const IPT: &str = r#"# Generated by iptables-save v1.8.9 (nf_tables) on Mon Dec  7 00:49:21 2026
*nat
:PREROUTING ACCEPT [0:0]
-A PREROUTING -p udp --dport 69 -j DROP
COMMIT
*filter
:INPUT DROP [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:mychain - [0:0]
-A INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A INPUT -i lo -j ACCEPT
-A INPUT -p udp -m udp --dport 69 -j ACCEPT
-A INPUT -p udp -m multiport --dports 67,4011:4012 -m comment --comment "pxe boot" -j ACCEPT
-A INPUT -s 10.0.0.0/8 -p udp -m udp --dport 5000 -j DROP
-A INPUT -j mychain
-A mychain -p tcp -m tcp --dport 8000 -j ACCEPT
-A mychain -p udp -m udp ! --dport 53 -j REJECT --reject-with icmp-port-unreachable
COMMIT
"#;

    #[test]
    fn iptables_save() {
        let t = parse_iptables_save(IPT, "iptables").unwrap().unwrap();
        assert_eq!(flow(&t, 69), Flow::Accept);
        assert_eq!(flow(&t, 67), Flow::Accept);
        assert_eq!(flow(&t, 4012), Flow::Accept);
        let f = flow(&t, 8000);
        assert!(
            matches!(&f, Flow::Drop(by) if by.contains("REJECT")),
            "{f:?}"
        );
        // 5000: dropped for 10/8 sources, rejected in mychain for the rest.
        assert!(matches!(flow(&t, 5000), Flow::Drop(_)));
        // 53: gets to the end: the INPUT policy.
        assert!(matches!(&flow(&t, 53), Flow::Drop(by) if by.contains("policy")));
        assert_eq!(parse_iptables_save("*nat\nCOMMIT\n", "x").unwrap(), None);
        assert!(parse_iptables_save("*filter\n:INPUT ACCEPT [0:0]\ngarbage\n", "x").is_err());
    }

    #[test]
    fn check_reports_each_port_once() {
        let d = Dumps {
            nft: Some(Ok(NFT.to_string())),
            ..Default::default()
        };
        let f = check(&[(69, "tftp"), (67, "proxy-dhcp"), (69, "again")], &[], &d);
        assert_eq!(f.len(), 2);
        assert_eq!(f[0].status, super::super::Status::Pass);
        assert_eq!(f[1].status, super::super::Status::Warn);
        let none = check(&[(69, "tftp")], &[], &Dumps::default());
        assert!(none[0].detail.contains("could not check"));
        let denied = Dumps {
            nft: Some(Err("Operation not permitted".into())),
            ..Default::default()
        };
        assert!(check(&[(69, "tftp")], &[], &denied)[0]
            .detail
            .contains("Operation not permitted"));
    }

    #[test]
    fn nested_uncertainty_stays_bounded() {
        // 40 uncertain rules in a row: forks, but within the budget or reported.
        let mut c = Chain {
            input_policy: Some(false),
            rules: Vec::new(),
        };
        for i in 0..40 {
            c.rules.push(Rule {
                text: format!("r{i}"),
                conds: vec![Cond::Unknown("ip saddr".into())],
                verdict: if i % 2 == 0 {
                    Verdict::Accept
                } else {
                    Verdict::Next
                },
            });
        }
        let mut t = Table::default();
        t.chains.insert("INPUT".into(), c);
        assert!(matches!(flow(&t, 69), Flow::Uncertain(_)));
    }
}
