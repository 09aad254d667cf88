//! The CLI's client subcommands: each turns arguments into API calls and prints a table
//! (or, with `--json`, the JSON the server sent). Answers are read as the [`crate::api`]
//! types the server handlers send, so a renamed field breaks the build, not the output.

mod boots_text;

use std::fmt::Display;
use std::net::IpAddr;
use std::path::Path;

use anyhow::{bail, Context};
use serde::Serialize;
use serde_json::{json, Value};

use crate::api::v1::{
    AcquireRequest, ArtifactDetail, ArtifactQuery, ClusterView, EnrollRequest, EventPage,
    EventsQuery, HostChanged, HostRemoved, HostView, MigrateRequest, NodeDetail, NodeQuery,
    ProfileRequest, RebalanceQuery, RebalanceView, ReleaseQuery, RemoveHostQuery, RenewRequest,
    ReservationGrant, StatusView, UpdateRequest, Uploaded, MAX_PAGE,
};
use crate::api::v1::{ImportFormat, ImportReport, IMPORT_MAX_BYTES};
use crate::api::TOKEN_FILE;
use crate::blobs::Digest;
use crate::cli::{ApiArgs, ArtifactCmd, HostCmd, NodeCmd};
use crate::client::{table, urlencode, with_query, Client, Reply};
use crate::store::types::node_addresses;
use crate::store::{Artifact, HandoffState, MacAddr, Node, NodeFile, ProvisionState};

/// Connects with the given or the local token.
fn connect(api: &ApiArgs) -> anyhow::Result<Client> {
    let token = match &api.token {
        Some(t) => t.clone(),
        None => {
            let p = api.data_dir.join(TOKEN_FILE);
            std::fs::read_to_string(&p)
                .map(|t| t.trim().to_string())
                .with_context(|| {
                    format!(
                        "no API token: pass --token or set BATON_API_TOKEN (cannot read {}; run as the server's user, or give --data-dir)",
                        p.display()
                    )
                })?
        }
    };
    Ok(Client::with_ca(&api.api, &token, api.ca.as_deref())?)
}

/// A value, or `-` when there is none.
fn opt<T: Display>(v: &Option<T>) -> String {
    v.as_ref().map_or_else(|| "-".into(), T::to_string)
}

/// Items joined by `sep`.
fn joined<T: Display>(items: &[T], sep: &str) -> String {
    items.iter().map(T::to_string).collect::<Vec<_>>().join(sep)
}

/// A value as JSON text (lists in the detail views).
fn json_text<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

/// Prints the answer: the server's JSON with `--json`, else `human` of its body.
fn print<T>(api: &ApiArgs, reply: &Reply<T>, human: impl FnOnce(&T) -> String) {
    if api.json {
        print_json(&reply.raw);
    } else {
        print!("{}", human(&reply.body));
    }
}

/// Prints a CLI-made answer (e.g. of a delete, which has no body).
fn print_value(api: &ApiArgs, v: Value, text: String) {
    if api.json {
        print_json(&v);
    } else {
        print!("{text}");
    }
}

fn print_json(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

fn handoff_label(h: &HandoffState) -> &'static str {
    match h {
        HandoffState::None => "none",
        HandoffState::Migrating { .. } => "migrating",
    }
}

fn node_rows(nodes: &[Node]) -> String {
    let rows: Vec<Vec<String>> = nodes
        .iter()
        .map(|n| {
            vec![
                n.id.clone(),
                joined(&n.macs, ","),
                n.group.clone(),
                n.owner.clone(),
                n.epoch.to_string(),
                n.provision_state.as_str().to_string(),
                handoff_label(&n.handoff).to_string(),
                n.boot_profile
                    .as_ref()
                    .map_or("none", |p| p.kind())
                    .to_string(),
            ]
        })
        .collect();
    table(
        &[
            "NODE", "MACS", "GROUP", "OWNER", "EPOCH", "STATE", "HANDOFF", "PROFILE",
        ],
        &rows,
    )
}

/// A node's served files as a table.
fn files_table(files: &[NodeFile]) -> String {
    let rows: Vec<Vec<String>> = files
        .iter()
        .map(|f| vec![f.path.clone(), f.size.to_string(), f.digest.to_string()])
        .collect();
    table(&["PATH", "SIZE", "SHA256"], &rows)
}

fn node_detail(d: &NodeDetail) -> String {
    let n = &d.node;
    let mut out = String::new();
    for (k, v) in [
        ("id", n.id.clone()),
        ("group", n.group.clone()),
        ("arch", opt(&n.arch)),
        ("owner", n.owner.clone()),
        ("epoch", n.epoch.to_string()),
        ("provision_state", n.provision_state.as_str().to_string()),
        ("last_token", n.last_token.to_string()),
    ] {
        out.push_str(&format!("{k:<16} {v}\n"));
    }
    out.push_str(&format!("{:<16} {}\n", "macs", joined(&n.macs, ", ")));
    if !n.addresses.is_empty() {
        out.push_str(&format!(
            "{:<16} {}\n",
            "addresses",
            joined(&n.addresses, ", ")
        ));
    }
    let handoff = match &n.handoff {
        HandoffState::Migrating { to, since } => format!("migrating to {to} since {since}"),
        h => handoff_label(h).to_string(),
    };
    out.push_str(&format!("{:<16} {handoff}\n", "handoff"));
    let p = n.boot_profile.as_ref();
    out.push_str(&format!(
        "{:<16} {}\n",
        "profile",
        p.map_or("none", |p| p.kind())
    ));
    if let Some(k) = p.and_then(|p| p.kernel_boot()) {
        out.push_str(&format!(
            "{:<16} {}\n{:<16} {}\n{:<16} {}\n",
            "  kernel", k.kernel, "  ramdisk", k.ramdisk, "  cmdline", k.cmdline
        ));
    }
    if let Some(s) = &n.stuck {
        out.push_str(&format!("{:<16} {s}\n", "stuck"));
    }
    if let Some(f) = &n.fence {
        out.push_str(&format!(
            "{:<16} until {} confirms the migration (event {}) or is down\n",
            "fenced", f.host, f.seq
        ));
    }
    if let Some(b) = &d.boot {
        out.push_str(&boots_text::summary_lines(b));
    }
    if let Some(r) = &d.reservation {
        out.push_str(&format!(
            "{:<16} {} (token {}, until {})\n",
            "reserved by", r.holder, r.token, r.expires_at
        ));
    }
    if let Some(a) = &d.access {
        let set: Vec<String> = n.addresses.iter().map(|a| a.to_string()).collect();
        let token = n.boot_token.map(|t| format!("/_t/{t}/..."));
        let who = match (a.mode.as_str(), &token) {
            ("open", _) => "anyone (node_files = open)".to_string(),
            ("token", Some(t)) => format!(
                "whoever names its boot token ({t}, node_files = token); without it, its \
                 MAC-named configs to its own addresses, nothing else"
            ),
            ("token", None) => "its own addresses: its files carry no boot token yet \
                 (node_files = token; `baton node update ID --rotate-token` renders them \
                 with one)"
                .to_string(),
            _ if a.addresses.is_empty() && set.is_empty() => {
                "its own addresses; none set or seen yet (they come from its next PXE \
                 boot, or `baton node update ID --address IP`)"
                    .into()
            }
            _ if set.is_empty() => format!("its own addresses: {}", a.addresses.join(", ")),
            _ if a.addresses.is_empty() => format!("its own addresses: {} (set)", set.join(", ")),
            _ => format!(
                "its own addresses: {} (set), {} (seen)",
                set.join(", "),
                a.addresses.join(", ")
            ),
        };
        out.push_str(&format!("{:<16} {who}\n", "files served to"));
        if a.refused > 0 {
            let last = a
                .last_refused
                .as_ref()
                .map(|(ip, at)| format!(", last to {ip} at {at}"))
                .unwrap_or_default();
            let why = match a.last_reason.as_deref() {
                Some("bad_token") => ", the last one with another boot token",
                Some("no_token") => ", the last one without the boot token",
                _ => "",
            };
            let whom = match a.mode.as_str() {
                "token" => "not from the node",
                _ => "from other addresses",
            };
            out.push_str(&format!(
                "{:<16} {} request(s) {whom}{last}{why}\n",
                "refused", a.refused
            ));
        }
    }
    out.push_str("\nfiles:\n");
    out.push_str(&files_table(&d.files));
    out
}

/// A digest as given, or a file uploaded first.
fn artifact_ref(c: &Client, api: &ApiArgs, v: &str) -> anyhow::Result<Digest> {
    let p = Path::new(v);
    if p.is_file() {
        let up = upload(c, api, p, None)?;
        return match up.body.artifact {
            Some(a) => Ok(a.digest),
            None => bail!("{v} was uploaded but the server lists no artifact for it"),
        };
    }
    v.parse()
        .map_err(|_| anyhow::anyhow!("{v:?} is neither a file nor a sha256 digest"))
}

fn upload(
    c: &Client,
    api: &ApiArgs,
    file: &Path,
    name: Option<&str>,
) -> anyhow::Result<Reply<Uploaded>> {
    let name = name
        .map(str::to_string)
        .or_else(|| file.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "artifact".into());
    let total = std::fs::metadata(file).map(|m| m.len()).unwrap_or(0);
    let bar = if api.json || total < (8 << 20) {
        indicatif::ProgressBar::hidden()
    } else {
        let b = indicatif::ProgressBar::new(total);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b.set_message(format!("uploading {name}"));
        b
    };
    let r = c.upload(file, &name, |done, _| bar.set_position(done));
    bar.finish_and_clear();
    Ok(r?)
}

/// A flag's value read as its API name (`--handoff migrating`), so the CLI accepts
/// exactly what the server does.
fn named<T: serde::de::DeserializeOwned>(flag: &str, v: &str) -> anyhow::Result<T> {
    use serde::de::IntoDeserializer;
    let de: serde::de::value::StrDeserializer<'_, serde::de::value::Error> = v.into_deserializer();
    T::deserialize(de).map_err(|e| anyhow::anyhow!("{flag} {v}: {e}"))
}

/// Every page of a list, `page_size` items per request, up to `max` items; a spinner
/// counts them on a terminal while pages arrive.
fn list_all<T: serde::de::DeserializeOwned, Q: Serialize>(
    api: &ApiArgs,
    c: &Client,
    path: &str,
    max: Option<usize>,
    page_size: usize,
    query: impl Fn(usize, Option<String>) -> Q,
) -> anyhow::Result<Reply<Vec<T>>> {
    if page_size == 0 || page_size > MAX_PAGE {
        bail!("--page-size must be 1 to {MAX_PAGE}");
    }
    let bar = if api.json {
        indicatif::ProgressBar::hidden()
    } else {
        let b = indicatif::ProgressBar::new_spinner();
        b.set_style(
            indicatif::ProgressStyle::with_template("{spinner} {msg} {pos} listed")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
        );
        b.set_message(path.trim_start_matches("/v1/").to_string());
        b
    };
    let r = c.list_all(
        |cursor| {
            let left = max.map_or(page_size, |m| m.min(page_size));
            with_query(path, &query(left.max(1), cursor.map(str::to_string)))
        },
        max,
        |n| bar.set_position(n as u64),
    );
    bar.finish_and_clear();
    Ok(r?)
}

/// `baton node import FILE`: one request, a progress bar while the server commits,
/// then the report.
fn node_import(api: &ApiArgs, c: &Client, file: &Path, format: Option<&str>) -> anyhow::Result<()> {
    let format: ImportFormat = match format {
        Some(f) => named("--format", f)?,
        None => match file.extension().and_then(|e| e.to_str()) {
            Some(e) if e.eq_ignore_ascii_case("csv") => ImportFormat::Csv,
            Some(e)
                if ["jsonl", "ndjson", "json"]
                    .iter()
                    .any(|x| e.eq_ignore_ascii_case(x)) =>
            {
                ImportFormat::Jsonl
            }
            _ => bail!(
                "cannot tell the format of {} from its name: give --format csv or --format jsonl",
                file.display()
            ),
        },
    };
    let meta =
        std::fs::metadata(file).with_context(|| format!("cannot read {}", file.display()))?;
    if meta.len() > IMPORT_MAX_BYTES {
        bail!(
            "{} is {} bytes, more than the {IMPORT_MAX_BYTES} one import takes: split it (re-running an import is harmless)",
            file.display(),
            meta.len()
        );
    }
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("cannot read {} as text", file.display()))?;
    let total = crate::import::nodes::count_records(&text, format);
    drop(text);
    let bar = if api.json {
        indicatif::ProgressBar::hidden()
    } else {
        let b = indicatif::ProgressBar::new(total);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "importing [{bar:30}] {pos}/{len} nodes {per_sec} eta {eta} {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b
    };
    let r = c.import(file, format, |p| {
        bar.set_position(p.lines);
        bar.set_message(format!(
            "({} new, {} changed, {} unchanged, {} refused)",
            p.created, p.updated, p.unchanged, p.failed
        ));
    });
    bar.finish_and_clear();
    let r = r?;
    print(api, &r, import_text);
    let rep = &r.body;
    if let Some(e) = &rep.error {
        bail!(
            "the import stopped early: {} (what was committed stays; re-run the import to finish)",
            e.message
        );
    }
    if rep.counts.failed > 0 {
        bail!(
            "{} line(s) of {} refused",
            rep.counts.failed,
            file.display()
        );
    }
    Ok(())
}

/// The import report for a person: totals, then every refused and changed line.
fn import_text(r: &ImportReport) -> String {
    let c = &r.counts;
    let mut out = format!(
        "{} nodes: {} created, {} updated, {} unchanged, {} failed ({} log entries, {:.1} s)\n",
        c.lines,
        c.created,
        c.updated,
        c.unchanged,
        c.failed,
        r.log_entries,
        r.elapsed_ms as f64 / 1000.0
    );
    if !r.updated_nodes.is_empty() {
        out.push_str("\nupdated:\n");
        let rows: Vec<Vec<String>> = r
            .updated_nodes
            .iter()
            .map(|u| vec![u.line.to_string(), u.node.clone(), u.fields.join(",")])
            .collect();
        out.push_str(&table(&["LINE", "NODE", "CHANGED"], &rows));
    }
    if !r.failures.is_empty() {
        out.push_str("\nfailed:\n");
        let rows: Vec<Vec<String>> = r
            .failures
            .iter()
            .map(|f| {
                vec![
                    f.line.to_string(),
                    opt(&f.node),
                    f.code.clone(),
                    f.message.clone(),
                ]
            })
            .collect();
        out.push_str(&table(&["LINE", "NODE", "CODE", "REASON"], &rows));
    }
    out
}

/// Boot MACs as given with `--mac`.
fn parse_macs(macs: &[String]) -> anyhow::Result<Vec<MacAddr>> {
    macs.iter()
        .map(|m| m.parse().with_context(|| format!("--mac {m}")))
        .collect()
}

/// A node's own addresses as given with `--address`, checked as the server will.
fn parse_addresses(given: &[String]) -> anyhow::Result<Vec<IpAddr>> {
    let ips = given
        .iter()
        .map(|a| {
            a.parse::<IpAddr>()
                .map_err(|_| anyhow::anyhow!("--address {a}: not an IP address"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    node_addresses(&ips).map_err(|m| anyhow::anyhow!("--address: {m}"))
}

/// `baton node ...`
pub fn node(api: &ApiArgs, cmd: NodeCmd) -> anyhow::Result<()> {
    let c = connect(api)?;
    match cmd {
        NodeCmd::Enroll {
            id,
            macs,
            group,
            arch,
            addresses,
        } => {
            let req = EnrollRequest {
                id,
                macs: parse_macs(&macs)?,
                group,
                arch,
                addresses: parse_addresses(&addresses)?,
            };
            let r: Reply<Node> = c.send("POST", "/v1/nodes", &req)?;
            print(api, &r, |n| {
                format!("enrolled {} (owner {}, epoch {})\n", n.id, n.owner, n.epoch)
            });
        }
        NodeCmd::List {
            owner,
            group,
            arch,
            provision_state,
            handoff,
            stuck,
            profile,
            mac,
            limit,
            page_size,
        } => {
            let query = NodeQuery {
                owner,
                group,
                arch,
                provision_state: provision_state
                    .map(|v| named("--provision-state", &v))
                    .transpose()?,
                handoff: handoff.map(|v| named("--handoff", &v)).transpose()?,
                stuck: stuck.then_some(true),
                profile: profile.map(|v| named("--profile", &v)).transpose()?,
                mac: mac
                    .map(|m| m.parse().with_context(|| format!("--mac {m}")))
                    .transpose()?,
                limit: None,
                cursor: None,
            };
            let r: Reply<Vec<Node>> =
                list_all(api, &c, "/v1/nodes", limit, page_size, |l, cursor| {
                    NodeQuery {
                        limit: Some(l),
                        cursor,
                        ..query.clone()
                    }
                })?;
            print(api, &r, |n| node_rows(n));
        }
        NodeCmd::Import { file, format } => node_import(api, &c, &file, format.as_deref())?,
        NodeCmd::Show { id } => {
            let r = c.get(&format!("/v1/nodes/{id}"))?;
            print(api, &r, node_detail);
        }
        NodeCmd::Boots { id, attempts } => {
            let q = crate::api::boots::BootsQuery {
                attempts: Some(attempts),
            };
            let r = c.get(&with_query(&format!("/v1/nodes/{id}/boots"), &q)?)?;
            print(api, &r, boots_text::node_boots);
        }
        NodeCmd::Update {
            id,
            macs,
            group,
            arch,
            provision_state,
            addresses,
            clear_addresses,
            rotate_token,
        } => {
            let provision_state = provision_state
                .map(|p| {
                    ProvisionState::parse(&p).with_context(|| {
                        let all: Vec<_> = ProvisionState::ALL.iter().map(|s| s.as_str()).collect();
                        format!("unknown provision state {p:?}: use {}", all.join(", "))
                    })
                })
                .transpose()?;
            let req = UpdateRequest {
                macs: (!macs.is_empty()).then(|| parse_macs(&macs)).transpose()?,
                group,
                arch: arch.map(Some),
                provision_state,
                addresses: if clear_addresses {
                    Some(Vec::new())
                } else {
                    (!addresses.is_empty())
                        .then(|| parse_addresses(&addresses))
                        .transpose()?
                },
                rotate_token,
                expected_epoch: None,
            };
            let r: Reply<Node> = c.send("PATCH", &format!("/v1/nodes/{id}"), &req)?;
            print(api, &r, |n| format!("updated {}\n", n.id));
        }
        NodeCmd::Delete { id } => {
            c.delete::<()>(&format!("/v1/nodes/{id}"))?;
            print_value(api, json!({ "deleted": id }), format!("deleted {id}\n"));
        }
        NodeCmd::SetProfile {
            id,
            kind,
            kernel,
            ramdisk,
            cmdline,
        } => {
            let req = ProfileRequest {
                kind,
                kernel: kernel.map(|k| artifact_ref(&c, api, &k)).transpose()?,
                ramdisk: ramdisk.map(|r| artifact_ref(&c, api, &r)).transpose()?,
                cmdline,
            };
            let r = c.send("PUT", &format!("/v1/nodes/{id}/profile"), &req)?;
            print(api, &r, node_detail);
        }
        NodeCmd::Migrate { id, to, wait } => {
            let r: Reply<Node> = c.send(
                "POST",
                &format!("/v1/nodes/{id}/migrate"),
                &MigrateRequest { to: to.clone() },
            )?;
            if wait == 0 {
                print(api, &r, |n| {
                    format!(
                        "migrating {id} from {} to {to} (epoch {})\n",
                        n.owner, n.epoch
                    )
                });
                return Ok(());
            }
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(wait);
            loop {
                let n: Reply<NodeDetail> = c.get(&format!("/v1/nodes/{id}"))?;
                if !matches!(n.body.node.handoff, HandoffState::Migrating { .. }) {
                    let done = n.body.node.owner == to;
                    print(api, &n, |d| {
                        if done {
                            format!("migrated {id} to {to} (epoch {})\n", d.node.epoch)
                        } else {
                            format!(
                                "migration of {id} rolled back; owner {} (epoch {})\n",
                                d.node.owner, d.node.epoch
                            )
                        }
                    });
                    if !done {
                        bail!("migration of {id} did not complete");
                    }
                    return Ok(());
                }
                if std::time::Instant::now() > deadline {
                    bail!("migration of {id} still in progress after {wait} s");
                }
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
        }
        NodeCmd::Files { id } => {
            let r = c.get(&format!("/v1/nodes/{id}/files"))?;
            print(api, &r, |f: &Vec<NodeFile>| files_table(f));
        }
        NodeCmd::Reserve { id, holder, ttl } => {
            let req = AcquireRequest {
                holder,
                ttl_secs: ttl,
            };
            let r: Reply<ReservationGrant> =
                c.send("POST", &format!("/v1/nodes/{id}/reservation"), &req)?;
            print(api, &r, |g| {
                format!(
                    "reserved {id} for {} (token {})\n",
                    g.reservation.holder, g.reservation.token
                )
            });
        }
        NodeCmd::Renew {
            id,
            holder,
            fencing_token,
            ttl,
        } => {
            let req = RenewRequest {
                holder,
                token: fencing_token,
                ttl_secs: ttl,
            };
            let r: Reply<ReservationGrant> =
                c.send("PUT", &format!("/v1/nodes/{id}/reservation"), &req)?;
            print(api, &r, |g| {
                format!("renewed {id} until {}\n", g.reservation.expires_at)
            });
        }
        NodeCmd::Release {
            id,
            holder,
            fencing_token,
        } => {
            let path = format!("/v1/nodes/{id}/reservation");
            let query = ReleaseQuery {
                holder,
                token: fencing_token,
            };
            c.delete::<()>(&with_query(&path, &query)?)?;
            print_value(api, json!({ "released": id }), format!("released {id}\n"));
        }
    }
    Ok(())
}

/// `baton artifact ...`
pub fn artifact(api: &ApiArgs, cmd: ArtifactCmd) -> anyhow::Result<()> {
    let c = connect(api)?;
    match cmd {
        ArtifactCmd::Add { file, name } => {
            let r = upload(&c, api, &file, name.as_deref())?;
            print(api, &r, |u| {
                let what = if u.created {
                    "stored"
                } else {
                    "already stored"
                };
                let a = u.artifact.as_ref();
                format!(
                    "{what} {} ({} bytes) sha256 {}\n",
                    opt(&a.map(|a| &a.name)),
                    opt(&a.map(|a| a.size)),
                    opt(&a.map(|a| a.digest))
                )
            });
        }
        ArtifactCmd::List {
            name,
            host,
            page_size,
        } => {
            let query = ArtifactQuery {
                name,
                host,
                limit: None,
                cursor: None,
            };
            let r: Reply<Vec<Artifact>> =
                list_all(api, &c, "/v1/artifacts", None, page_size, |l, cursor| {
                    ArtifactQuery {
                        limit: Some(l),
                        cursor,
                        ..query.clone()
                    }
                })?;
            print(api, &r, |arts| {
                let rows: Vec<Vec<String>> = arts
                    .iter()
                    .map(|a| {
                        vec![
                            a.digest.to_string(),
                            a.size.to_string(),
                            a.name.clone(),
                            joined(&a.hosts, ","),
                        ]
                    })
                    .collect();
                table(&["SHA256", "SIZE", "NAME", "HOSTS"], &rows)
            });
        }
        ArtifactCmd::Show { digest } => {
            let r: Reply<ArtifactDetail> = c.get(&format!("/v1/artifacts/{digest}"))?;
            print(api, &r, |d| {
                let a = &d.artifact;
                format!(
                    "sha256   {}\nname     {}\nsize     {}\nhosts    {}\nnodes    {}\nheld here {}\n",
                    a.digest,
                    a.name,
                    a.size,
                    json_text(&a.hosts),
                    json_text(&d.nodes),
                    d.held_here
                )
            });
        }
        ArtifactCmd::Rm { digest } => {
            c.delete::<()>(&format!("/v1/artifacts/{digest}"))?;
            print_value(
                api,
                json!({ "removed": digest }),
                format!("removed {digest}\n"),
            );
        }
    }
    Ok(())
}

/// `baton host ...`
pub fn host(api: &ApiArgs, cmd: HostCmd) -> anyhow::Result<()> {
    let c = connect(api)?;
    match cmd {
        HostCmd::List => {
            let r: Reply<Vec<HostView>> = c.get("/v1/hosts")?;
            print(api, &r, |hosts| {
                let rows: Vec<Vec<String>> = hosts
                    .iter()
                    .map(|h| {
                        let me = if h.is_self { "*" } else { "" };
                        vec![
                            format!("{}{me}", h.host.name),
                            h.host.group.clone(),
                            h.state.as_str().to_string(),
                            h.nodes.to_string(),
                            format!("{} ms ago", h.heartbeat_age_ms),
                            joined(&h.host.addresses, ","),
                        ]
                    })
                    .collect();
                table(
                    &[
                        "HOST",
                        "GROUP",
                        "STATE",
                        "NODES",
                        "LAST HEARTBEAT",
                        "ADDRESSES",
                    ],
                    &rows,
                )
            });
        }
        HostCmd::Drain { host } => {
            let r: Reply<HostChanged> = c.send(
                "POST",
                &format!("/v1/hosts/{}/drain", urlencode(&host)),
                &json!({}),
            )?;
            print(api, &r, |_| {
                format!("draining {host}: its nodes are being migrated away\n")
            });
        }
        HostCmd::Undrain { host } => {
            let r: Reply<HostChanged> = c.send(
                "POST",
                &format!("/v1/hosts/{}/undrain", urlencode(&host)),
                &json!({}),
            )?;
            print(api, &r, |_| format!("{host} no longer draining\n"));
        }
        HostCmd::Rebalance {
            dry_run,
            wait,
            stop,
        } => rebalance(api, &c, dry_run, wait, stop)?,
        HostCmd::Remove { host, id } => {
            let path = format!("/v1/hosts/{}", urlencode(&host));
            let r: Reply<HostRemoved> = c.delete(&with_query(&path, &RemoveHostQuery { id })?)?;
            print(api, &r, |h| {
                format!("removed {host} (identities {})\n", json_text(&h.removed))
            });
        }
    }
    Ok(())
}

/// Most moves listed one by one (all of them with `--json`).
const MOVES_LISTED: usize = 40;

/// The plan as a table of hosts (now -> after), moves per pair of hosts, and the first
/// moves.
fn rebalance_text(v: &RebalanceView) -> String {
    let mut out = String::new();
    let rows: Vec<Vec<String>> = v
        .groups
        .iter()
        .flat_map(|g| {
            g.hosts.iter().map(|h| {
                vec![
                    g.group.clone(),
                    h.host.clone(),
                    h.nodes.to_string(),
                    h.after.to_string(),
                ]
            })
        })
        .collect();
    out.push_str(&table(&["GROUP", "HOST", "NODES", "AFTER"], &rows));
    if v.moves.is_empty() {
        out.push_str("nothing to move: every group is within one node of even\n");
        return out;
    }
    let mut pairs: std::collections::BTreeMap<(&str, &str), usize> = Default::default();
    for m in &v.moves {
        *pairs.entry((m.from.as_str(), m.to.as_str())).or_default() += 1;
    }
    out.push_str(&format!(
        "{} moves, at most {} migrations at once{}:\n",
        v.moves.len(),
        v.max_concurrent,
        v.max_nodes_per_host
            .map(|c| format!(", at most {c} nodes per host"))
            .unwrap_or_default()
    ));
    for ((from, to), n) in &pairs {
        out.push_str(&format!("  {from} -> {to}: {n} nodes\n"));
    }
    for m in v.moves.iter().take(MOVES_LISTED) {
        out.push_str(&format!("  {}  {} -> {}\n", m.node, m.from, m.to));
    }
    if v.moves.len() > MOVES_LISTED {
        out.push_str(&format!(
            "  ... and {} more (--json lists them all)\n",
            v.moves.len() - MOVES_LISTED
        ));
    }
    out
}

/// `baton host rebalance [--dry-run] [--wait SECS] [--stop]`
fn rebalance(
    api: &ApiArgs,
    c: &Client,
    dry_run: bool,
    wait: u64,
    stop: bool,
) -> anyhow::Result<()> {
    const PATH: &str = "/v1/hosts/rebalance";
    if stop {
        let r: Reply<RebalanceView> = c.delete(PATH)?;
        print(api, &r, |v| {
            format!(
                "rebalance {}; {} migrations still in progress finish\n",
                if v.changed {
                    "stopped"
                } else {
                    "was not active"
                },
                v.in_flight
            )
        });
        return Ok(());
    }
    let path = with_query(PATH, &RebalanceQuery { dry_run })?;
    let r: Reply<RebalanceView> = c.send("POST", &path, &json!({}))?;
    print(api, &r, |v| {
        let mut s = rebalance_text(v);
        if dry_run {
            s.push_str("dry run: nothing changed\n");
        } else if !v.moves.is_empty() {
            s.push_str(if v.changed {
                "rebalance started\n"
            } else {
                "a rebalance was already active\n"
            });
        }
        s
    });
    if dry_run || wait == 0 || r.body.moves.is_empty() {
        return Ok(());
    }
    let total = r.body.moves.len();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(wait);
    let mut last = String::new();
    loop {
        let v: Reply<RebalanceView> = c.get(PATH)?;
        let left = v.body.moves.len();
        if !v.body.active && v.body.in_flight == 0 {
            if !api.json {
                println!(
                    "rebalance finished: {} nodes moved, {left} left",
                    total.saturating_sub(left)
                );
            }
            return Ok(());
        }
        let line = format!(
            "moved {}/{total}, {} migrations in progress",
            total.saturating_sub(left),
            v.body.in_flight
        );
        if line != last && !api.json {
            eprintln!("{line}");
            last = line;
        }
        if std::time::Instant::now() >= deadline {
            bail!("rebalance not finished within {wait} s ({left} moves left); it goes on: see `baton host rebalance --dry-run`");
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
}

/// `baton status`
pub fn status(api: &ApiArgs) -> anyhow::Result<()> {
    let c = connect(api)?;
    let r: Reply<StatusView> = c.get("/v1/status")?;
    print(api, &r, |v| {
        format!(
            "host         {} (group {})\nversion      {}\nnodes        {} ({} owned here)\nartifacts    {}\nstore        {} bytes, schema {}, last event {}\ntftp         {} active, {} completed, {} bytes\n",
            v.host,
            v.group,
            v.version,
            v.nodes,
            v.owned_nodes,
            v.artifacts,
            v.store_bytes,
            v.schema_version,
            v.last_event,
            v.tftp.active,
            v.tftp.completed,
            v.tftp.bytes,
        ) + &cluster_text(&v.cluster)
    });
    Ok(())
}

fn cluster_text(c: &ClusterView) -> String {
    let mut out = format!(
        "cluster      {} (term {}, leader {}, applied {}, snapshot {})\n",
        if c.clustered {
            "enabled"
        } else {
            "single host"
        },
        c.term,
        opt(&c.leader_host),
        opt(&c.applied_index),
        opt(&c.snapshot_index),
    );
    let rows: Vec<Vec<String>> = c
        .members
        .iter()
        .map(|m| {
            vec![
                format!("{}{}", m.host, if m.is_self { "*" } else { "" }),
                m.node_id.to_string(),
                m.role.as_str().to_string(),
                opt(&m.matched_index),
                opt(&m.lag),
                m.addr.clone(),
            ]
        })
        .collect();
    out.push_str(&table(
        &["MEMBER", "ID", "ROLE", "MATCHED", "LAG", "ADDRESS"],
        &rows,
    ));
    let r = &c.artifact_replication;
    out.push_str(&format!("artifacts    {} missing here", r.missing));
    if let Some(current) = &r.current {
        out.push_str(&format!(
            ", fetching {current} from {}: {}/{} bytes",
            opt(&r.from),
            r.bytes,
            r.total
        ));
    }
    if let Some(e) = &r.last_error {
        out.push_str(&format!(" (last error: {e})"));
    }
    out.push('\n');
    out
}

/// `baton events`
pub fn events(api: &ApiArgs, since: u64, follow: bool) -> anyhow::Result<()> {
    let c = connect(api)?;
    let mut since = since;
    loop {
        let query = EventsQuery {
            since,
            wait: if follow { 30 } else { 0 },
            limit: None,
        };
        let page: Reply<EventPage> = c.get(&with_query("/v1/events", &query)?)?;
        if api.json {
            // One line per event, as the server sent it.
            for e in page.raw["events"].as_array().into_iter().flatten() {
                println!("{e}");
            }
        } else {
            for e in &page.body.events {
                println!(
                    "{:>6}  {}  {:<24} node={} host={} {}",
                    e.seq,
                    e.at,
                    e.kind,
                    opt(&e.node),
                    opt(&e.host),
                    e.data
                );
            }
        }
        since = page.body.last;
        if !follow {
            return Ok(());
        }
    }
}

/// `baton ingest DIR`: one ingest pass on the server.
pub fn ingest(api: &ApiArgs, dir: &Path, quiet_ms: u64) -> anyhow::Result<()> {
    use crate::ingest::driver::IngestRequest;
    use crate::ingest::IngestReport;
    let c = connect(api)?;
    let dir = std::path::absolute(dir).with_context(|| format!("{}", dir.display()))?;
    let req = IngestRequest {
        dir: dir.display().to_string(),
        quiet_ms,
    };
    let r: Reply<IngestReport> = c.send("POST", "/v1/ingest", &req)?;
    print(api, &r, |r| {
        let mut out = format!(
            "ingested {} as {}: {} node(s) enrolled, {} updated, {} byte(s) read\n",
            r.dir,
            r.source,
            r.enrolled.len(),
            r.updated.len(),
            r.bytes_read
        );
        for n in &r.enrolled {
            out.push_str(&format!("  enrolled {n}\n"));
        }
        for s in &r.refused {
            out.push_str(&format!("  refused  {}: {}\n", s.path, s.why));
        }
        for s in &r.skipped {
            out.push_str(&format!("  skipped  {}: {}\n", s.path, s.why));
        }
        for w in &r.waiting {
            out.push_str(&format!("  waiting  {w}: still being written; run again\n"));
        }
        out
    });
    Ok(())
}

/// `baton import ...`.
pub fn import(cmd: crate::cli::ImportCmd) -> anyhow::Result<()> {
    let crate::cli::ImportCmd::Dnsmasq {
        api,
        files,
        dry_run,
        config_out,
        group,
    } = cmd;
    let mut texts = Vec::new();
    for f in &files {
        let text =
            std::fs::read_to_string(f).with_context(|| format!("cannot read {}", f.display()))?;
        texts.push((f.display().to_string(), text));
    }
    let t = crate::import::dnsmasq::translate(&texts);
    let toml = t.config_toml();
    match &config_out {
        Some(p) => {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(p)
                .with_context(|| {
                    format!("cannot create {} (it must not exist yet)", p.display())
                })?;
            f.write_all(toml.as_bytes())?;
            eprintln!("configuration written to {}", p.display());
        }
        None if !api.json => print!("{toml}"),
        None => {}
    }
    for u in &t.untranslated {
        eprintln!(
            "{}:{}: not translated: {}\n    {}",
            u.at.file, u.at.line, u.why, u.text
        );
    }
    let mut enrolled = Vec::new();
    let mut refused = Vec::new();
    if dry_run {
        for n in &t.nodes {
            eprintln!(
                "would enroll {} ({}{}) from {}:{}",
                n.id,
                joined(&n.macs, ","),
                spec_addresses(n),
                n.at.file,
                n.at.line
            );
        }
    } else if !t.nodes.is_empty() {
        let c = connect(&api)?;
        for n in &t.nodes {
            let req = EnrollRequest {
                id: n.id.clone(),
                macs: n.macs.clone(),
                group: group.clone(),
                arch: None,
                addresses: n.addresses.clone(),
            };
            match c.send::<_, Node>("POST", "/v1/nodes", &req) {
                Ok(_) => {
                    eprintln!(
                        "enrolled {} ({}{})",
                        n.id,
                        joined(&n.macs, ","),
                        spec_addresses(n)
                    );
                    enrolled.push(n.id.clone());
                }
                Err(e) => {
                    eprintln!("not enrolled {} ({}:{}): {e}", n.id, n.at.file, n.at.line);
                    refused.push(json!({ "node": n.id, "error": e.to_string() }));
                }
            }
        }
    }
    if api.json {
        print_json(&json!({
            "translation": t,
            "config": toml,
            "enrolled": enrolled,
            "refused": refused,
        }));
    }
    if refused.is_empty() {
        Ok(())
    } else {
        bail!("{} node(s) were not enrolled", refused.len())
    }
}

/// `; addresses A, B` for a translated node that has fixed addresses.
fn spec_addresses(n: &crate::import::dnsmasq::NodeSpec) -> String {
    if n.addresses.is_empty() {
        String::new()
    } else {
        format!("; addresses {}", joined(&n.addresses, ", "))
    }
}
