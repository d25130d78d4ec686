//! Reading the nodes' logs as evidence: kernel lines, uevents and daemon timelines, each on
//! the host's clock.
