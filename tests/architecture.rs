//! Architecture invariants as tests: the IO-free crates stay IO-free, the store stays
//! blocking, only the node knows both HTTP and QUIC, and every Rust file opens with a `//!`
//! paragraph saying what it is.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::path::{Path, PathBuf};

use serde_json::Value;

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// Names of every package `package` depends on (normal dependencies, transitively).
fn normal_dependencies(metadata: &Value, package: &str) -> BTreeSet<String> {
    let packages = metadata["packages"].as_array().expect("packages");
    let name_of: HashMap<&str, &str> = packages
        .iter()
        .map(|p| (p["id"].as_str().unwrap(), p["name"].as_str().unwrap()))
        .collect();
    let nodes = metadata["resolve"]["nodes"].as_array().expect("resolve");
    let deps_of: HashMap<&str, Vec<&str>> = nodes
        .iter()
        .map(|n| {
            let normal: Vec<&str> = n["deps"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|d| {
                    d["dep_kinds"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .any(|k| k["kind"].is_null())
                })
                .map(|d| d["pkg"].as_str().unwrap())
                .collect();
            (n["id"].as_str().unwrap(), normal)
        })
        .collect();
    let start = packages
        .iter()
        .find(|p| p["name"] == package)
        .and_then(|p| p["id"].as_str())
        .expect("package in the workspace");
    let mut seen = BTreeSet::new();
    let mut queue = VecDeque::from([start]);
    while let Some(id) = queue.pop_front() {
        for dep in deps_of.get(id).into_iter().flatten() {
            if seen.insert(name_of[dep].to_owned()) {
                queue.push_back(dep);
            }
        }
    }
    seen
}

/// The host's target triple, from `rustc -vV`.
fn host_triple() -> String {
    let out = std::process::Command::new("rustc")
        .arg("-vV")
        .output()
        .expect("run rustc -vV");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: ").map(str::to_owned))
        .expect("rustc -vV names the host")
}

/// The resolved dependency graph for this host. Filtered to the host because `--offline`
/// cannot resolve packages only other targets use (quinn's `web-time` for wasm) that a host
/// build never downloads.
fn metadata() -> Value {
    let host = host_triple();
    let out = std::process::Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--format-version",
            "1",
            "--offline",
            "--filter-platform",
        ])
        .arg(&host)
        .current_dir(workspace_root())
        .output()
        .expect("run cargo metadata");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("metadata JSON")
}

#[test]
fn model_and_wire_depend_on_no_runtime_storage_or_network_crate() {
    let metadata = metadata();
    for package in ["lectern-model", "lectern-wire"] {
        let deps = normal_dependencies(&metadata, package);
        assert!(
            deps.contains("serde"),
            "{package}: the dependency walk found nothing"
        );
        for forbidden in [
            "tokio",
            "sled",
            "axum",
            "quinn",
            "hyper",
            "socketioxide",
            "mio",
        ] {
            assert!(
                !deps.contains(forbidden),
                "{package} depends on {forbidden}: {deps:?}"
            );
        }
    }
}

#[test]
fn store_is_blocking_only() {
    let deps = normal_dependencies(&metadata(), "lectern-store");
    assert!(deps.contains("sled"));
    assert!(!deps.contains("tokio"), "lectern-store depends on tokio");
}

#[test]
fn only_the_node_knows_both_http_and_quic() {
    let metadata = metadata();
    let http = ["axum", "hyper", "socketioxide"];
    // rustls alone is not QUIC: the gateway reaches it through lectern-jobs, whose SMTP client
    // (lettre) speaks STARTTLS/TLS. quinn (and its protocol crate) is what must stay out.
    let quic = ["quinn", "quinn-proto"];
    let mesh = normal_dependencies(&metadata, "lectern-mesh");
    assert!(mesh.contains("quinn"), "the mesh walk found no quinn");
    for forbidden in http {
        assert!(
            !mesh.contains(forbidden),
            "lectern-mesh depends on {forbidden}"
        );
    }
    for package in ["lectern-gateway", "lectern-hub"] {
        let deps = normal_dependencies(&metadata, package);
        for forbidden in quic {
            assert!(
                !deps.contains(forbidden),
                "{package} depends on {forbidden}"
            );
        }
    }
    let node = normal_dependencies(&metadata, "lectern-node");
    assert!(node.contains("quinn") && node.contains("axum"));
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read dir") {
        let path = entry.expect("entry").path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if path.is_dir() {
            if name != "target" && !name.starts_with('.') && name != "node_modules" {
                rust_files(&path, out);
            }
        } else if name.ends_with(".rs") {
            out.push(path);
        }
    }
}

#[test]
fn model_and_wire_read_no_clock_or_randomness() {
    let root = workspace_root();
    let mut files = Vec::new();
    rust_files(&root.join("crates/lectern-model/src"), &mut files);
    rust_files(&root.join("crates/lectern-wire/src"), &mut files);
    assert!(files.len() >= 5);
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        for needle in [
            "SystemTime::now",
            "Instant::now",
            "rand::",
            "thread_rng",
            "getrandom",
        ] {
            assert!(!text.contains(needle), "{} uses {needle}", f.display());
        }
    }
}

/// The gateway's `lib.rs` is its map: module declarations and re-exports, no code of its own.
#[test]
fn the_gateway_lib_rs_only_declares_modules_and_re_exports() {
    let lib = workspace_root().join("crates/lectern-gateway/src/lib.rs");
    let text = std::fs::read_to_string(&lib).unwrap();
    let code: Vec<&str> = text
        .lines()
        .map(str::trim)
        // An attribute (`#[doc(hidden)]` on the fuzzing module) belongs to the declaration under it.
        .filter(|l| !l.is_empty() && !l.starts_with("//") && !l.starts_with("#["))
        .collect();
    assert!(
        code.len() >= 10,
        "lib.rs has only {} lines of code",
        code.len()
    );
    let other: Vec<&&str> = code
        .iter()
        .filter(|l| {
            !["mod ", "pub mod ", "pub use ", "pub(crate) use "]
                .iter()
                .any(|p| l.starts_with(p))
        })
        .collect();
    assert!(
        other.is_empty(),
        "lib.rs holds more than its map: {other:?}"
    );
}

/// Only `gateway.rs` reads the gateway's shared state; every other file asks through an
/// accessor (the fields are private too, so the compiler holds this for `impl Gateway` blocks
/// in other files; this test keeps a `pub(crate)` from creeping back).
#[test]
fn only_gateway_rs_reaches_into_the_gateways_state() {
    let src = workspace_root().join("crates/lectern-gateway/src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    assert!(files.len() >= 20, "found only {} files", files.len());
    let reaching: Vec<String> = files
        .iter()
        .map(|f| f.strip_prefix(&src).unwrap().display().to_string())
        .filter(|name| name != "gateway.rs")
        .filter(|name| {
            let text = std::fs::read_to_string(src.join(name)).unwrap();
            let flat: String = text.split_whitespace().collect();
            flat.contains("gw.inner.") || flat.contains("gateway.inner.")
        })
        .collect();
    assert!(
        reaching.is_empty(),
        "files reaching into gw.inner: {reaching:?}"
    );
}

#[test]
fn every_rust_file_opens_with_a_module_doc() {
    let root = workspace_root();
    let mut files = Vec::new();
    for dir in ["crates", "node", "cli", "tests", "benches", "fuzz"] {
        rust_files(&root.join(dir), &mut files);
    }
    assert!(files.len() >= 20, "found only {} files", files.len());
    let undocumented: Vec<String> = files
        .iter()
        .filter(|f| {
            let text = std::fs::read_to_string(f).unwrap();
            !text.trim_start().starts_with("//!")
        })
        .map(|f| f.strip_prefix(&root).unwrap().display().to_string())
        .collect();
    assert!(
        undocumented.is_empty(),
        "files without a //! paragraph: {undocumented:?}"
    );
}

#[test]
fn web_client_is_files_only() {
    // The browser client is static files compiled into the node: no crate of its own to run.
    let deps = normal_dependencies(&metadata(), "lectern-web");
    assert!(deps.is_empty(), "lectern-web depends on {deps:?}");
}

/// The string literals of a Rust source, outside comments (plain `"…"` literals; escapes kept
/// as written).
fn string_literals(source: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in source.lines() {
        let code = line.trim_start();
        if code.starts_with("//") {
            continue;
        }
        let mut rest = code;
        while let Some(start) = rest.find('"') {
            let after = &rest[start + 1..];
            let mut end = None;
            let mut escaped = false;
            for (i, c) in after.char_indices() {
                match c {
                    '\\' if !escaped => escaped = true,
                    '"' if !escaped => {
                        end = Some(i);
                        break;
                    }
                    _ => escaped = false,
                }
            }
            let Some(end) = end else { break };
            out.push(after[..end].to_owned());
            rest = &after[end + 1..];
        }
    }
    out
}

/// Whether a literal looks like a Socket.IO event or room name (`qa:ask`, `session:join`,
/// `server:error`, `session:{id}`).
fn names_an_event(literal: &str) -> bool {
    let Some((family, _)) = literal.split_once(':') else {
        return false;
    };
    !family.is_empty() && family.bytes().all(|b| b.is_ascii_lowercase())
}

#[test]
fn socketio_semantics_live_in_one_place() {
    // What a Socket.IO event means (names, dispatch, acks, joins, cut-off notices) is decided
    // by the sans-IO core in the gateway's `sio` module; the transports only move packets.
    let src = workspace_root().join("crates/lectern-gateway/src");
    for file in ["ws.rs", "socket.rs"] {
        let source = std::fs::read_to_string(src.join(file)).expect("read a transport");
        let named: Vec<String> = string_literals(&source)
            .into_iter()
            .filter(|l| names_an_event(l))
            .collect();
        assert!(
            named.is_empty(),
            "{file} names Socket.IO events {named:?}: their meaning belongs in sio/"
        );
        for forbidden in [
            "COMMAND_EVENTS",
            "join_args",
            "leave_args",
            "already_joined",
        ] {
            assert!(
                !source.contains(forbidden),
                "{file} uses {forbidden}: event dispatch belongs in sio/client.rs"
            );
        }
    }
    // The check itself can fail: it sees an event name where one is written.
    assert!(
        string_literals(r#"s.on("session:join", f); // "qa:ask""#)
            .iter()
            .any(|l| names_an_event(l))
    );
    assert!(!names_an_event("HTTP/1.1 101 Switching Protocols"));
}

/// The modules of `crates/lectern-model/src` each file names through `crate::` (a module, or
/// an item the crate root re-exports from one), comments left out: file stem → stems.
fn model_imports(root: &Path) -> HashMap<String, BTreeSet<String>> {
    let src = root.join("crates/lectern-model/src");
    let code = |path: &Path| -> String {
        std::fs::read_to_string(path)
            .expect("read a model file")
            .lines()
            .filter(|l| !l.trim_start().starts_with("//"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let mut modules: BTreeSet<String> = BTreeSet::new();
    for entry in std::fs::read_dir(&src).expect("read the model's src") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "rs") {
            modules.insert(path.file_stem().unwrap().to_string_lossy().to_string());
        }
    }
    modules.remove("lib");
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect()
    };
    // What the crate root re-exports: `pub use module::{A, B};` and `pub use module::A;`.
    let lib = code(&src.join("lib.rs"));
    let mut owner: HashMap<String, String> = HashMap::new();
    for stmt in lib.split(';') {
        let Some(rest) = stmt.trim().strip_prefix("pub use ") else {
            continue;
        };
        let Some((module, names)) = rest.split_once("::") else {
            continue;
        };
        for name in names.split([',', '{', '}']) {
            let name = ident(name.trim());
            if !name.is_empty() {
                owner.insert(name, module.trim().to_owned());
            }
        }
    }
    let mut graph = HashMap::new();
    for module in &modules {
        let text = code(&src.join(format!("{module}.rs")));
        let mut uses = BTreeSet::new();
        for (i, _) in text.match_indices("crate::") {
            let rest = &text[i + "crate::".len()..];
            let firsts: Vec<String> = match rest.strip_prefix('{') {
                Some(group) => {
                    let group = &group[..group.find('}').unwrap_or(group.len())];
                    group.split(',').map(|p| ident(p.trim())).collect()
                }
                None => vec![ident(rest)],
            };
            for first in firsts {
                let target = if modules.contains(&first) {
                    Some(first)
                } else {
                    owner.get(&first).cloned()
                };
                if let Some(t) = target.filter(|t| t != module) {
                    uses.insert(t);
                }
            }
        }
        graph.insert(module.clone(), uses);
    }
    graph
}

#[test]
fn the_model_is_a_one_way_chain_of_modules() {
    let graph = model_imports(&workspace_root());
    assert!(
        graph.len() >= 20,
        "found only {} model modules",
        graph.len()
    );
    assert!(
        graph["replica"].contains("apply") && graph["apply"].contains("session"),
        "the import reader sees no imports: {graph:?}"
    );
    // Kahn's algorithm: whatever is left once every module that imports nothing left is
    // peeled off lies on an import circle.
    let mut left: HashMap<&str, BTreeSet<&str>> = graph
        .iter()
        .map(|(m, uses)| (m.as_str(), uses.iter().map(String::as_str).collect()))
        .collect();
    let mut ready: VecDeque<&str> = left
        .iter()
        .filter(|(_, uses)| uses.is_empty())
        .map(|(m, _)| *m)
        .collect();
    while let Some(done) = ready.pop_front() {
        left.remove(done);
        for (m, uses) in left.iter_mut() {
            if uses.remove(done) && uses.is_empty() {
                ready.push_back(m);
            }
        }
    }
    assert!(
        left.is_empty(),
        "model modules on an import circle or above one (module -> what it still imports): {left:?}"
    );
}
