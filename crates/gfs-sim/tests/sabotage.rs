//! The checkers must be able to fail: each test breaks one safety gate of the core through a
//! test-only switch and asserts that the sweep reports the rule that gate protects.

use gfs_core::Sabotage;
use gfs_sim::{run, sweep_config, Rule};

/// The rule the first failing seed reports, searching at most `max_seeds` seeds.
fn first_broken_rule(sabotage: Sabotage, max_seeds: u64) -> Option<(u64, Rule)> {
    (1..=max_seeds).find_map(|seed| {
        let mut cfg = sweep_config(seed, None, None);
        cfg.sabotage = sabotage;
        run(cfg).violation.map(|v| (seed, v.rule))
    })
}

fn expect(sabotage: Sabotage, rule: Rule) {
    match first_broken_rule(sabotage, 300) {
        Some((_, got)) => assert_eq!(got, rule, "{sabotage:?} was caught, but as the wrong rule"),
        None => panic!("{sabotage:?} went unnoticed over 300 seeds"),
    }
}

#[test]
fn replaying_without_waiting_for_fencing_breaks_s1() {
    // Unfenced nodes break more than replay ordering (a later mount may then start beside a
    // journal nobody will replay: S5), so the first broken seed may report another rule: S1
    // must be what most of them report.
    let sabotage = Sabotage {
        skip_fencing: true,
        ..Default::default()
    };
    let rules: Vec<Rule> = (1..=300)
        .filter_map(|seed| {
            let mut cfg = sweep_config(seed, None, None);
            cfg.sabotage = sabotage;
            run(cfg).violation.map(|v| v.rule)
        })
        .take(10)
        .collect();
    let s1 = rules.iter().filter(|r| **r == Rule::S1).count();
    assert!(s1 * 2 > rules.len(), "{sabotage:?} was caught as {rules:?}");
}

#[test]
fn unblocking_before_the_replay_finished_breaks_s3() {
    expect(
        Sabotage {
            early_unblock: true,
            ..Default::default()
        },
        Rule::S3,
    );
}

#[test]
fn replaying_before_every_member_blocked_breaks_s3() {
    expect(
        Sabotage {
            skip_barrier: true,
            ..Default::default()
        },
        Rule::S3,
    );
}

#[test]
fn handing_out_a_duplicate_jid_breaks_s4() {
    expect(
        Sabotage {
            duplicate_jid: true,
            ..Default::default()
        },
        Rule::S4,
    );
}

#[test]
fn mounting_during_first_mounter_replay_breaks_s5() {
    expect(
        Sabotage {
            skip_first_wait: true,
            ..Default::default()
        },
        Rule::S5,
    );
}

#[test]
fn telling_dlm_controld_before_blocking_breaks_s8() {
    expect(
        Sabotage {
            early_dlm_notify: true,
            ..Default::default()
        },
        Rule::S8,
    );
}

#[test]
fn readmitting_a_stale_partition_breaks_s7() {
    expect(
        Sabotage {
            accept_stale_merge: true,
            ..Default::default()
        },
        Rule::S7,
    );
}

#[test]
fn the_unsabotaged_core_passes_the_same_seeds() {
    assert_eq!(first_broken_rule(Sabotage::default(), 300), None);
}
