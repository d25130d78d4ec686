//! Recovery cost stays flat in the number of filesystems: one failure with N members and F
//! filesystems costs at most N + F messages in two rounds (the historical daemon sent N·F + F).

use gfs_sim::cost::recovery_cost;

#[test]
fn one_failure_costs_two_rounds_and_at_most_n_plus_f_messages() {
    for f in [1, 16, 256] {
        let c = recovery_cost(16, f);
        assert_eq!(c.rounds, 2, "{c:?}");
        assert!(c.messages <= 16 + f as u64, "{c:?}");
    }
}
