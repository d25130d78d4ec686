//! The dlm_controld fs-control adapter (`gfs_controld::dlm`) against the test double of
//! dlm_controld's socket (`gfs_testkit::dlm_sim`), run in-process on an abstract socket whose
//! name is unique to the test. No root needed.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use gfs_controld::dlm::{DlmAddress, DlmControl, DlmEvent, DlmOptions};
use gfs_core::Table;
use gfs_testkit::dlm_sim::{DlmRecord, DlmSim, DlmSimOptions};
use tokio::sync::mpsc;

const WAIT: Duration = Duration::from_secs(10);

fn unique_address(tag: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "@gfs-dlm-test-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn table(fs: &str) -> Table {
    Table::parse(&format!("alpha:{fs}")).unwrap()
}

fn adapter(address: &str, options: DlmOptions) -> (DlmControl, mpsc::UnboundedReceiver<DlmEvent>) {
    DlmControl::spawn(DlmAddress::parse(address).unwrap(), options)
}

async fn next_event(events: &mut mpsc::UnboundedReceiver<DlmEvent>) -> DlmEvent {
    tokio::time::timeout(WAIT, events.recv())
        .await
        .expect("an adapter event in time")
        .expect("adapter alive")
}

/// Waits until the double's records satisfy `done`.
async fn until(sim: &DlmSim, what: &str, done: impl Fn(&[DlmRecord]) -> bool) -> Vec<DlmRecord> {
    let deadline = Instant::now() + WAIT;
    loop {
        let records = sim.records();
        if done(&records) {
            return records;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {records:#?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn notifies(records: &[DlmRecord], fs: &str, nodeid: u32) -> Vec<DlmRecord> {
    records
        .iter()
        .filter(|r| r.op == "notify" && r.name == fs && r.nodeid == Some(nodeid))
        .cloned()
        .collect()
}

fn registered_ok(fs: &str) -> DlmEvent {
    DlmEvent::Registered {
        table: table(fs),
        result: Ok(()),
    }
}

#[tokio::test]
async fn register_is_answered_once_and_unregister_is_sent() {
    let address = unique_address("reg");
    let sim = DlmSim::start(&address, DlmSimOptions::default()).unwrap();
    let (dlm, mut events) = adapter(&address, DlmOptions::default());
    dlm.register(table("fs1"));
    assert_eq!(next_event(&mut events).await, registered_ok("fs1"));
    dlm.unregister(table("fs1"));
    let records = until(&sim, "unregister", |r| {
        r.iter().any(|r| r.op == "unregister")
    })
    .await;
    let ops: Vec<(&str, &str, Option<i32>)> = records
        .iter()
        .map(|r| (r.op.as_str(), r.name.as_str(), r.result))
        .collect();
    assert_eq!(
        ops,
        vec![("register", "fs1", Some(0)), ("unregister", "fs1", None)]
    );
    assert!(events.try_recv().is_err(), "one answer per registration");
}

#[tokio::test]
async fn register_without_fscontrol_is_eopnotsupp() {
    let address = unique_address("nofs");
    let options = DlmSimOptions {
        fscontrol: false,
        ..DlmSimOptions::default()
    };
    let _sim = DlmSim::start(&address, options).unwrap();
    let (dlm, mut events) = adapter(&address, DlmOptions::default());
    dlm.register(table("fs1"));
    assert_eq!(
        next_event(&mut events).await,
        DlmEvent::Registered {
            table: table("fs1"),
            result: Err(libc::EOPNOTSUPP)
        }
    );
}

#[tokio::test]
async fn register_without_dlm_controld_is_enotconn() {
    let address = unique_address("absent");
    let (dlm, mut events) = adapter(&address, DlmOptions::default());
    dlm.register(table("fs1"));
    assert_eq!(
        next_event(&mut events).await,
        DlmEvent::Registered {
            table: table("fs1"),
            result: Err(libc::ENOTCONN)
        }
    );
    // A later registration tries again (dlm_controld may have started meanwhile).
    let sim = DlmSim::start(&address, DlmSimOptions::default()).unwrap();
    dlm.register(table("fs2"));
    assert_eq!(next_event(&mut events).await, registered_ok("fs2"));
    let records = sim.records();
    assert!(records.iter().all(|r| r.name == "fs2"), "{records:?}");
}

fn notified(fs: &str, nodeid: u32, result: Result<(), i32>) -> DlmEvent {
    DlmEvent::Notified {
        table: table(fs),
        nodeid,
        result,
    }
}

#[tokio::test]
async fn each_notify_is_one_try_whose_answer_goes_back() {
    // The core retries -EAGAIN itself (only it knows whether the node came back meanwhile).
    let address = unique_address("eagain");
    let options = DlmSimOptions {
        eagain: 1,
        ..DlmSimOptions::default()
    };
    let sim = DlmSim::start(&address, options).unwrap();
    let (dlm, mut events) = adapter(&address, DlmOptions::default());
    dlm.register(table("fs1"));
    assert_eq!(next_event(&mut events).await, registered_ok("fs1"));
    dlm.notify(table("fs1"), 3);
    assert_eq!(
        next_event(&mut events).await,
        notified("fs1", 3, Err(libc::EAGAIN))
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        notifies(&sim.records(), "fs1", 3).len(),
        1,
        "no retry by the adapter"
    );
    dlm.notify(table("fs1"), 3);
    assert_eq!(next_event(&mut events).await, notified("fs1", 3, Ok(())));
    assert_eq!(notifies(&sim.records(), "fs1", 3).len(), 2);
}

#[tokio::test]
async fn interleaved_notifies_are_matched_by_name_and_node() {
    let address = unique_address("mix");
    let options = DlmSimOptions {
        eagain: 1,
        ..DlmSimOptions::default()
    };
    let _sim = DlmSim::start(&address, options).unwrap();
    let (dlm, mut events) = adapter(&address, DlmOptions::default());
    dlm.register(table("fs1"));
    dlm.register(table("fs2"));
    let mut answers = vec![next_event(&mut events).await, next_event(&mut events).await];
    answers.sort_by_key(|e| format!("{e:?}"));
    assert_eq!(answers, vec![registered_ok("fs1"), registered_ok("fs2")]);
    let pairs = [("fs1", 2), ("fs1", 3), ("fs2", 3)];
    for (fs, node) in pairs {
        dlm.notify(table(fs), node);
    }
    // A duplicate while pending is one notify.
    dlm.notify(table("fs1"), 3);
    for result in [Err(libc::EAGAIN), Ok(())] {
        let mut got = Vec::new();
        for _ in 0..3 {
            got.push(next_event(&mut events).await);
        }
        got.sort_by_key(|e| format!("{e:?}"));
        let mut want: Vec<DlmEvent> = pairs
            .iter()
            .map(|(fs, n)| notified(fs, *n, result))
            .collect();
        want.sort_by_key(|e| format!("{e:?}"));
        assert_eq!(got, want);
        if result.is_err() {
            for (fs, node) in pairs {
                dlm.notify(table(fs), node);
            }
        }
    }
}

#[tokio::test]
async fn a_restarted_dlm_controld_gets_every_registration_and_pending_notify_again() {
    let address = unique_address("restart");
    let first = DlmSim::start(&address, DlmSimOptions::default()).unwrap();
    let (dlm, mut events) = adapter(&address, DlmOptions::default());
    dlm.register(table("fs1"));
    dlm.register(table("fs2"));
    let mut answers = vec![next_event(&mut events).await, next_event(&mut events).await];
    answers.sort_by_key(|e| format!("{e:?}"));
    assert_eq!(answers, vec![registered_ok("fs1"), registered_ok("fs2")]);
    dlm.unregister(table("fs2"));
    until(&first, "unregister fs2", |r| {
        r.iter().any(|r| r.op == "unregister")
    })
    .await;

    // dlm_controld dies (its connections close); a notify asked meanwhile waits for it to come
    // back, knowing nothing.
    drop(first);
    tokio::time::sleep(Duration::from_millis(50)).await;
    dlm.notify(table("fs1"), 3);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let second = DlmSim::start(&address, DlmSimOptions::default()).unwrap();
    let records = until(&second, "re-registration and the notify", |r| {
        notifies(r, "fs1", 3).iter().any(|n| n.result == Some(0))
    })
    .await;
    let ops: Vec<(&str, &str)> = records
        .iter()
        .map(|r| (r.op.as_str(), r.name.as_str()))
        .collect();
    assert_eq!(
        ops,
        vec![("register", "fs1"), ("notify", "fs1")],
        "fs1 registered again before its notify; fs2 (unregistered) not"
    );
    assert_eq!(next_event(&mut events).await, notified("fs1", 3, Ok(())));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        events.try_recv().is_err(),
        "a re-registration is not answered to the daemon again"
    );
}
