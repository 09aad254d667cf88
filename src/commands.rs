//! The CLI's client subcommands: each turns arguments into API calls and prints a table
//! (or JSON with `--json`).

use std::path::Path;

use anyhow::{bail, Context};
use serde_json::{json, Value};

use crate::cli::{ApiArgs, ArtifactCmd, HostCmd, NodeCmd};
use crate::client::{table, Client};

/// Connects with the given or the local token.
fn connect(api: &ApiArgs) -> anyhow::Result<Client> {
    let token = match &api.token {
        Some(t) => t.clone(),
        None => {
            let p = api.data_dir.join(crate::serve::TOKEN_FILE);
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
    Ok(Client::new(&api.api, &token))
}

fn s(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        v => v.to_string(),
    }
}

fn print(api: &ApiArgs, v: &Value, human: impl FnOnce(&Value) -> String) {
    if api.json {
        println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
    } else {
        print!("{}", human(v));
    }
}

/// The elements of a JSON array (none for anything else).
fn items(v: &Value) -> &[Value] {
    v.as_array().map(|a| a.as_slice()).unwrap_or_default()
}

/// A JSON array of strings, comma-separated.
fn joined(v: &Value) -> String {
    items(v).iter().map(s).collect::<Vec<_>>().join(",")
}

fn node_rows(v: &Value) -> String {
    let rows: Vec<Vec<String>> = items(v)
        .iter()
        .map(|n| {
            vec![
                s(&n["id"]),
                joined(&n["macs"]),
                s(&n["group"]),
                s(&n["owner"]),
                s(&n["epoch"]),
                s(&n["provision_state"]),
                s(&n["handoff"]["state"]),
                n["boot_profile"]["kind"]
                    .as_str()
                    .unwrap_or("none")
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

/// A node's served files (a JSON array of NodeFile) as a table.
fn files_table(files: &Value) -> String {
    let rows: Vec<Vec<String>> = items(files)
        .iter()
        .map(|f| vec![s(&f["path"]), s(&f["size"]), s(&f["digest"])])
        .collect();
    table(&["PATH", "SIZE", "SHA256"], &rows)
}

fn node_detail(n: &Value) -> String {
    let mut out = String::new();
    for k in [
        "id",
        "group",
        "arch",
        "owner",
        "epoch",
        "provision_state",
        "last_token",
    ] {
        out.push_str(&format!("{k:<16} {}\n", s(&n[k])));
    }
    let macs = n["macs"]
        .as_array()
        .map(|m| m.iter().map(s).collect::<Vec<_>>().join(", "))
        .unwrap_or_default();
    out.push_str(&format!("{:<16} {macs}\n", "macs"));
    let h = &n["handoff"];
    let handoff = match h["state"].as_str() {
        Some("migrating") => format!("migrating to {} since {}", s(&h["to"]), s(&h["since"])),
        other => other.unwrap_or("none").to_string(),
    };
    out.push_str(&format!("{:<16} {handoff}\n", "handoff"));
    let p = &n["boot_profile"];
    out.push_str(&format!(
        "{:<16} {}\n",
        "profile",
        p["kind"].as_str().unwrap_or("none")
    ));
    if p.get("kernel").is_some() {
        out.push_str(&format!(
            "{:<16} {}\n{:<16} {}\n{:<16} {}\n",
            "  kernel",
            s(&p["kernel"]),
            "  ramdisk",
            s(&p["ramdisk"]),
            "  cmdline",
            s(&p["cmdline"])
        ));
    }
    if !n["stuck"].is_null() {
        out.push_str(&format!("{:<16} {}\n", "stuck", s(&n["stuck"])));
    }
    let f = &n["fence"];
    if !f.is_null() {
        out.push_str(&format!(
            "{:<16} until {} confirms the migration (event {}) or is down\n",
            "fenced",
            s(&f["host"]),
            s(&f["seq"])
        ));
    }
    let r = &n["reservation"];
    if !r.is_null() {
        out.push_str(&format!(
            "{:<16} {} (token {}, until {})\n",
            "reserved by",
            s(&r["holder"]),
            s(&r["token"]),
            s(&r["expires_at"])
        ));
    }
    if n["files"].is_array() {
        out.push_str("\nfiles:\n");
        out.push_str(&files_table(&n["files"]));
    }
    out
}

/// A digest as given, or a file uploaded first.
fn artifact_ref(c: &Client, api: &ApiArgs, v: &str) -> anyhow::Result<String> {
    let p = Path::new(v);
    if p.is_file() {
        let a = upload(c, api, p, None)?;
        return Ok(s(&a["artifact"]["digest"]));
    }
    if v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(v.to_string());
    }
    bail!("{v:?} is neither a file nor a sha256 digest")
}

fn upload(c: &Client, api: &ApiArgs, file: &Path, name: Option<&str>) -> anyhow::Result<Value> {
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

/// `baton node ...`
pub fn node(api: &ApiArgs, cmd: NodeCmd) -> anyhow::Result<()> {
    let c = connect(api)?;
    match cmd {
        NodeCmd::Enroll {
            id,
            macs,
            group,
            arch,
        } => {
            let v = c.send(
                "POST",
                "/v1/nodes",
                &json!({ "id": id, "macs": macs, "group": group, "arch": arch }),
            )?;
            print(api, &v, |v| {
                format!(
                    "enrolled {} (owner {}, epoch {})\n",
                    s(&v["id"]),
                    s(&v["owner"]),
                    s(&v["epoch"])
                )
            });
        }
        NodeCmd::List { owner, group } => {
            let mut q = Vec::new();
            if let Some(o) = owner {
                q.push(format!("owner={}", crate::client::urlencode(&o)));
            }
            if let Some(g) = group {
                q.push(format!("group={}", crate::client::urlencode(&g)));
            }
            let path = if q.is_empty() {
                "/v1/nodes".to_string()
            } else {
                format!("/v1/nodes?{}", q.join("&"))
            };
            let v = c.get(&path)?;
            print(api, &v, node_rows);
        }
        NodeCmd::Show { id } => {
            let v = c.get(&format!("/v1/nodes/{id}"))?;
            print(api, &v, node_detail);
        }
        NodeCmd::Update {
            id,
            macs,
            group,
            arch,
            provision_state,
        } => {
            let mut body = json!({});
            if !macs.is_empty() {
                body["macs"] = json!(macs);
            }
            if let Some(g) = group {
                body["group"] = json!(g);
            }
            if let Some(a) = arch {
                body["arch"] = json!(a);
            }
            if let Some(p) = provision_state {
                body["provision_state"] = json!(p);
            }
            let v = c.send("PATCH", &format!("/v1/nodes/{id}"), &body)?;
            print(api, &v, |v| format!("updated {}\n", s(&v["id"])));
        }
        NodeCmd::Delete { id } => {
            c.delete(&format!("/v1/nodes/{id}"))?;
            print(api, &json!({ "deleted": id }), |_| {
                format!("deleted {id}\n")
            });
        }
        NodeCmd::SetProfile {
            id,
            kind,
            kernel,
            ramdisk,
            cmdline,
        } => {
            let mut body = json!({ "kind": kind });
            if let Some(k) = kernel {
                body["kernel"] = json!(artifact_ref(&c, api, &k)?);
            }
            if let Some(r) = ramdisk {
                body["ramdisk"] = json!(artifact_ref(&c, api, &r)?);
            }
            if let Some(cl) = cmdline {
                body["cmdline"] = json!(cl);
            }
            let v = c.send("PUT", &format!("/v1/nodes/{id}/profile"), &body)?;
            print(api, &v, node_detail);
        }
        NodeCmd::Migrate { id, to, wait } => {
            let v = c.send(
                "POST",
                &format!("/v1/nodes/{id}/migrate"),
                &json!({ "to": to }),
            )?;
            let from = s(&v["owner"]);
            let epoch = v["epoch"].as_u64().unwrap_or(0);
            if wait == 0 {
                print(api, &v, |_| {
                    format!("migrating {id} from {from} to {to} (epoch {epoch})\n")
                });
                return Ok(());
            }
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(wait);
            loop {
                let n = c.get(&format!("/v1/nodes/{id}"))?;
                if n["handoff"]["state"] != json!("migrating") {
                    let done = n["owner"] == json!(to);
                    print(api, &n, |n| {
                        if done {
                            format!("migrated {id} to {to} (epoch {})\n", s(&n["epoch"]))
                        } else {
                            format!(
                                "migration of {id} rolled back; owner {} (epoch {})\n",
                                s(&n["owner"]),
                                s(&n["epoch"])
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
            let v = c.get(&format!("/v1/nodes/{id}/files"))?;
            print(api, &v, files_table);
        }
        NodeCmd::Reserve { id, holder, ttl } => {
            let v = c.send(
                "POST",
                &format!("/v1/nodes/{id}/reservation"),
                &json!({ "holder": holder, "ttl_secs": ttl }),
            )?;
            print(api, &v, |v| {
                format!(
                    "reserved {id} for {} (token {})\n",
                    s(&v["reservation"]["holder"]),
                    s(&v["reservation"]["token"])
                )
            });
        }
        NodeCmd::Renew {
            id,
            holder,
            token,
            ttl,
        } => {
            let v = c.send(
                "PUT",
                &format!("/v1/nodes/{id}/reservation"),
                &json!({ "holder": holder, "token": token, "ttl_secs": ttl }),
            )?;
            print(api, &v, |v| {
                format!(
                    "renewed {id} until {}\n",
                    s(&v["reservation"]["expires_at"])
                )
            });
        }
        NodeCmd::Release { id, holder, token } => {
            c.delete(&format!(
                "/v1/nodes/{id}/reservation?holder={}&token={token}",
                crate::client::urlencode(&holder)
            ))?;
            print(api, &json!({ "released": id }), |_| {
                format!("released {id}\n")
            });
        }
    }
    Ok(())
}

/// `baton artifact ...`
pub fn artifact(api: &ApiArgs, cmd: ArtifactCmd) -> anyhow::Result<()> {
    let c = connect(api)?;
    match cmd {
        ArtifactCmd::Add { file, name } => {
            let v = upload(&c, api, &file, name.as_deref())?;
            print(api, &v, |v| {
                let a = &v["artifact"];
                let what = if v["created"] == json!(true) {
                    "stored"
                } else {
                    "already stored"
                };
                format!(
                    "{what} {} ({} bytes) sha256 {}\n",
                    s(&a["name"]),
                    s(&a["size"]),
                    s(&a["digest"])
                )
            });
        }
        ArtifactCmd::List => {
            let v = c.get("/v1/artifacts")?;
            print(api, &v, |v| {
                let rows: Vec<Vec<String>> = items(v)
                    .iter()
                    .map(|a| {
                        vec![
                            s(&a["digest"]),
                            s(&a["size"]),
                            s(&a["name"]),
                            joined(&a["hosts"]),
                        ]
                    })
                    .collect();
                table(&["SHA256", "SIZE", "NAME", "HOSTS"], &rows)
            });
        }
        ArtifactCmd::Show { digest } => {
            let v = c.get(&format!("/v1/artifacts/{digest}"))?;
            print(api, &v, |v| {
                let a = &v["artifact"];
                format!(
                    "sha256   {}\nname     {}\nsize     {}\nhosts    {}\nnodes    {}\nheld here {}\n",
                    s(&a["digest"]),
                    s(&a["name"]),
                    s(&a["size"]),
                    s(&a["hosts"]),
                    s(&v["nodes"]),
                    s(&v["held_here"])
                )
            });
        }
        ArtifactCmd::Rm { digest } => {
            c.delete(&format!("/v1/artifacts/{digest}"))?;
            print(api, &json!({ "removed": digest }), |_| {
                format!("removed {digest}\n")
            });
        }
    }
    Ok(())
}

/// `baton host ...`
pub fn host(api: &ApiArgs, cmd: HostCmd) -> anyhow::Result<()> {
    let c = connect(api)?;
    match cmd {
        HostCmd::List => {
            let v = c.get("/v1/hosts")?;
            print(api, &v, |v| {
                let rows: Vec<Vec<String>> = items(v)
                    .iter()
                    .map(|h| {
                        let me = if h["self"] == json!(true) { "*" } else { "" };
                        vec![
                            format!("{}{me}", s(&h["host"]["name"])),
                            s(&h["host"]["group"]),
                            s(&h["state"]),
                            s(&h["nodes"]),
                            format!("{} ms ago", s(&h["heartbeat_age_ms"])),
                            joined(&h["host"]["addresses"]),
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
            let v = c.send(
                "POST",
                &format!("/v1/hosts/{}/drain", crate::client::urlencode(&host)),
                &json!({}),
            )?;
            print(api, &v, |_| {
                format!("draining {host}: its nodes are being migrated away\n")
            });
        }
        HostCmd::Undrain { host } => {
            let v = c.send(
                "POST",
                &format!("/v1/hosts/{}/undrain", crate::client::urlencode(&host)),
                &json!({}),
            )?;
            print(api, &v, |_| format!("{host} no longer draining\n"));
        }
        HostCmd::Remove { host, id } => {
            let path = match id {
                Some(i) => format!("/v1/hosts/{}?id={i}", crate::client::urlencode(&host)),
                None => format!("/v1/hosts/{}", crate::client::urlencode(&host)),
            };
            let v = c.delete(&path)?;
            print(api, &v, |v| {
                format!("removed {host} (identities {})\n", v["removed"])
            });
        }
    }
    Ok(())
}

/// `baton status`
pub fn status(api: &ApiArgs) -> anyhow::Result<()> {
    let c = connect(api)?;
    let v = c.get("/v1/status")?;
    print(api, &v, |v| {
        format!(
            "host         {} (group {})\nversion      {}\nnodes        {} ({} owned here)\nartifacts    {}\nstore        {} bytes, schema {}, last event {}\ntftp         {} active, {} completed, {} bytes\n",
            s(&v["host"]),
            s(&v["group"]),
            s(&v["version"]),
            s(&v["nodes"]),
            s(&v["owned_nodes"]),
            s(&v["artifacts"]),
            s(&v["store_bytes"]),
            s(&v["schema_version"]),
            s(&v["last_event"]),
            s(&v["tftp"]["active"]),
            s(&v["tftp"]["completed"]),
            s(&v["tftp"]["bytes"]),
        ) + &cluster_text(&v["cluster"])
    });
    Ok(())
}

fn cluster_text(c: &Value) -> String {
    if c.is_null() {
        return String::new();
    }
    let mut out = format!(
        "cluster      {} (term {}, leader {}, applied {}, snapshot {})\n",
        if c["clustered"] == json!(true) {
            "enabled"
        } else {
            "single host"
        },
        s(&c["term"]),
        s(&c["leader_host"]),
        s(&c["applied_index"]),
        s(&c["snapshot_index"]),
    );
    let rows: Vec<Vec<String>> = items(&c["members"])
        .iter()
        .map(|m| {
            vec![
                format!(
                    "{}{}",
                    s(&m["host"]),
                    if m["self"] == json!(true) { "*" } else { "" }
                ),
                s(&m["node_id"]),
                s(&m["role"]),
                s(&m["matched_index"]),
                s(&m["lag"]),
                s(&m["addr"]),
            ]
        })
        .collect();
    out.push_str(&table(
        &["MEMBER", "ID", "ROLE", "MATCHED", "LAG", "ADDRESS"],
        &rows,
    ));
    let r = &c["artifact_replication"];
    out.push_str(&format!("artifacts    {} missing here", s(&r["missing"])));
    if !r["current"].is_null() {
        out.push_str(&format!(
            ", fetching {} from {}: {}/{} bytes",
            s(&r["current"]),
            s(&r["from"]),
            s(&r["bytes"]),
            s(&r["total"])
        ));
    }
    if !r["last_error"].is_null() {
        out.push_str(&format!(" (last error: {})", s(&r["last_error"])));
    }
    out.push('\n');
    out
}

/// `baton events`
pub fn events(api: &ApiArgs, since: u64, follow: bool) -> anyhow::Result<()> {
    let c = connect(api)?;
    let mut since = since;
    loop {
        let wait = if follow { 30 } else { 0 };
        let v = c.get(&format!("/v1/events?since={since}&wait={wait}"))?;
        for e in items(&v["events"]) {
            if api.json {
                println!("{e}");
            } else {
                println!(
                    "{:>6}  {}  {:<24} node={} host={} {}",
                    s(&e["seq"]),
                    s(&e["at"]),
                    s(&e["kind"]),
                    s(&e["node"]),
                    s(&e["host"]),
                    e["data"]
                );
            }
        }
        since = v["last"].as_u64().unwrap_or(since);
        if !follow {
            return Ok(());
        }
    }
}
