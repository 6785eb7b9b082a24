//! Crash tests: a child process (this very test binary, re-executed) applies commands through a
//! real hub and store and prints each acknowledgement; the parent SIGKILLs it mid-stream and
//! checks that every acknowledged command survived and the document loads. Also: a node stops
//! cleanly on SIGTERM, and the watchdog that kills a hung child (and only while it is armed).

use std::io::{BufRead, BufReader};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lectern_hub::{Hub, HubConfig};
use lectern_model::{CommandId, Replica, Role};
use lectern_store::Store;

use crate::support::{
    CHILD_ENV, KillOnDrop, TempDir, Watchdog, ask, caller, cmd, create_session, session,
    spawn_child,
};

/// Not a test of its own: the entry point of the child processes the tests below start. Run
/// without the child environment variable it has nothing to do and returns at once.
#[test]
fn child_entrypoint() {
    let Ok(role) = std::env::var(CHILD_ENV) else {
        return;
    };
    let dir = std::env::var("LECTERN_TEST_CHILD_DIR").expect("child dir");
    let rt = crate::support::child_runtime();
    match role.as_str() {
        "writer" => rt.block_on(writer_child(dir)),
        "node" => rt.block_on(node_child(dir)),
        other => panic!("unknown child role {other}"),
    }
}

/// Applies asks forever, 16 in flight, printing `ACK <id>` after each acknowledgement.
async fn writer_child(dir: String) {
    let store = Store::open(std::path::Path::new(&dir)).expect("open store");
    let epoch = store.identity().boot_epoch;
    let hub = Hub::new(store, HubConfig::default());
    let doc = session("crash");
    let admin = caller("admin", Role::Admin);
    // The first run creates the session; later runs find it.
    let _ = hub
        .execute(
            doc.clone(),
            admin.clone(),
            cmd("create", create_session("crash")),
        )
        .await;
    let out = Arc::new(std::sync::Mutex::new(std::io::stdout()));
    let mut tasks = Vec::new();
    for lane in 0..16u64 {
        let hub = hub.clone();
        let doc = doc.clone();
        let out = out.clone();
        tasks.push(tokio::spawn(async move {
            let student = caller(&format!("s{lane}"), Role::Student);
            for n in 0.. {
                let id = format!("e{epoch}-l{lane}-n{n}");
                let r = hub
                    .execute(
                        doc.clone(),
                        student.clone(),
                        cmd(&id, ask(&format!("question {id}"))),
                    )
                    .await;
                if r.is_ok() {
                    use std::io::Write;
                    let mut out = out.lock().expect("stdout lock");
                    let _ = writeln!(out, "ACK {id}");
                    let _ = out.flush();
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
}

/// Runs a node until SIGTERM.
async fn node_child(dir: String) {
    let config = lectern_node::Config {
        data_dir: dir.into(),
        http: "127.0.0.1:0".parse().expect("addr"),
        demo: true,
        ..Default::default()
    };
    let stop = lectern_node::shutdown_signal();
    let node = lectern_node::start(config).await.expect("start node");
    println!("READY {}", node.http_addr);
    stop.await;
    node.stop().await.expect("stop node");
    println!("STOPPED");
}

fn kill(child: &std::process::Child, signal: i32) {
    let pid = i32::try_from(child.id()).expect("pid fits i32");
    let rc = unsafe_kill(pid, signal);
    assert_eq!(rc, 0, "kill({pid}, {signal}) failed");
}

#[allow(unsafe_code)]
fn unsafe_kill(pid: i32, signal: i32) -> i32 {
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe { libc::kill(pid, signal) }
}

/// Reads `ACK` lines until `want` acks were seen (or the child's stdout ends).
fn read_acks(child: &mut std::process::Child, want: usize) -> Vec<String> {
    let stdout = child.stdout.take().expect("child stdout");
    let mut acks = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    for line in BufReader::new(stdout).lines() {
        let Ok(line) = line else { break };
        // libtest prints its own "test … " prefix on the first line, so look anywhere in it.
        if let Some((_, id)) = line.split_once("ACK ") {
            acks.push(id.trim().to_owned());
            if acks.len() >= want {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "child too slow: {} acks",
            acks.len()
        );
    }
    acks
}

#[test]
fn sigkill_mid_stream_loses_no_acknowledged_command() {
    let dir = TempDir::new("sigkill");
    let mut all_acked: Vec<String> = Vec::new();
    // Two crash rounds: the second run appends to the document the first one crashed on.
    for round in 0..2 {
        // Killed if this round fails half-way; a hung child is killed by the watchdog, which
        // is disarmed (dropped) once this round's child is reaped.
        let mut child = KillOnDrop(spawn_child("writer", dir.path()));
        let _watchdog = Watchdog::arm(child.id(), Duration::from_secs(120));
        let mut acked = read_acks(&mut child, 400);
        assert!(
            acked.len() >= 400,
            "round {round}: only {} acks",
            acked.len()
        );
        // The child is still writing: the kill lands mid-stream, with commands in flight.
        kill(&child, libc::SIGKILL);
        let _ = child.wait();
        all_acked.append(&mut acked);
    }
    let store = Store::open(dir.path()).expect("reopen after SIGKILL");
    let stored = store
        .load_doc("session/crash")
        .expect("read the document")
        .expect("the document exists");
    let replica = Replica::load(session("crash"), &stored.concat(), &[9u8; 24])
        .expect("the document loads after SIGKILL");
    let missing: Vec<&String> = all_acked
        .iter()
        .filter(|id| !replica.has_applied(&id.parse::<CommandId>().expect("id")))
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged commands lost, e.g. {:?}",
        missing.len(),
        all_acked.len(),
        &missing[..missing.len().min(5)]
    );
    let view = replica
        .session_view(&caller("admin", Role::Admin), lectern_model::Millis(0))
        .expect("view");
    // The view holds the newest questions and counts the older ones it left out.
    let questions = view["questions"].as_array().expect("questions").len()
        + view["older"]["questions"].as_u64().unwrap_or(0) as usize;
    assert!(
        questions >= all_acked.len(),
        "{questions} questions < {} acks",
        all_acked.len()
    );
}

#[test]
fn node_stops_cleanly_on_sigterm() {
    let dir = TempDir::new("sigterm");
    let mut child = KillOnDrop(spawn_child("node", dir.path()));
    let watchdog = Watchdog::arm(child.id(), Duration::from_secs(60));
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let ready = lines
        .by_ref()
        .map_while(Result::ok)
        .find(|l| l.contains("READY "))
        .expect("the node reports READY");
    assert!(ready.contains("127.0.0.1:"), "{ready}");
    kill(&child, libc::SIGTERM);
    // Read to the end: closing the pipe early would fail the child's own output.
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let stopped = rest.iter().any(|l| l.contains("STOPPED"));
    let status = child.wait().expect("wait for the node");
    drop(watchdog);
    assert!(stopped, "the node did not report a clean stop");
    assert!(status.success(), "exit status {status}");
    // The store was flushed and its lock released: it reopens with the demo data.
    let store = Store::open(dir.path()).expect("reopen after SIGTERM");
    assert_eq!(store.identity().boot_epoch, 2);
    assert!(
        store
            .load_doc("session/demo-session")
            .expect("read")
            .is_some()
    );
}

#[test]
fn a_watchdog_kills_a_hung_child_and_a_disarmed_one_leaves_it_alone() {
    use std::os::unix::process::ExitStatusExt;
    // Fires: a child that would run for a minute is killed after 100 ms.
    let mut hung = KillOnDrop(
        std::process::Command::new("sleep")
            .arg("60")
            .spawn()
            .expect("spawn sleep"),
    );
    let started = Instant::now();
    let _armed = Watchdog::arm(hung.id(), Duration::from_millis(100));
    let status = hung.wait().expect("wait for the hung child");
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status}");
    assert!(started.elapsed() < Duration::from_secs(30), "killed late");

    // Disarmed: dropped before its deadline, it never signals the child, which exits normally.
    let mut quick = KillOnDrop(
        std::process::Command::new("sleep")
            .arg("0.5")
            .spawn()
            .expect("spawn sleep"),
    );
    drop(Watchdog::arm(quick.id(), Duration::from_millis(100)));
    let status = quick.wait().expect("wait for the child");
    assert!(
        status.success(),
        "a disarmed watchdog killed its child: {status}"
    );
}
