//! The one drain loop every driver of a [`Node`] uses: the daemon, the simulator and the
//! protocol tests, so the simulator exercises exactly the order the daemon ships.

use crate::io::{Input, Output};
use crate::node::Node;
use crate::time::Time;

/// What carries out a node's outputs: the daemon's IO shell, the simulated world, a test bus.
pub trait Driver {
    type Error;
    /// The node being driven; `None` once it is gone (a simulated crash while executing).
    fn node(&mut self) -> Option<&mut Node>;
    /// Carries out one output. A driver that has the result at once (a synchronous write)
    /// returns it; results that come later are fed through [`drive`] as inputs of their own.
    fn execute(&mut self, output: Output) -> Result<Option<Input>, Self::Error>;
}

/// Feeds `input` at `now` and carries out everything it leads to.
///
/// Each output goes to [`Driver::execute`] in the order the core produced it. A result the
/// driver returns at once is fed back before the next output is executed; its own outputs
/// queue behind the ones already produced. An error stops the drain and is returned (outputs
/// not yet executed stay queued in the node). Afterwards the caller arms a timer for
/// [`Node::poll_timeout`] and feeds [`Input::Timeout`] when it fires.
pub fn drive<D: Driver>(driver: &mut D, now: Time, input: Input) -> Result<(), D::Error> {
    let Some(node) = driver.node() else {
        return Ok(());
    };
    node.handle(now, input);
    drain(driver, now)
}

/// Executes the outputs already queued (the join a new node starts with, or what an error cut
/// short), by the same rule as [`drive`].
pub fn drain<D: Driver>(driver: &mut D, now: Time) -> Result<(), D::Error> {
    while let Some(output) = driver.node().and_then(Node::poll_output) {
        if let Some(result) = driver.execute(output)? {
            match driver.node() {
                Some(node) => node.handle(now, result),
                None => break,
            }
        }
    }
    Ok(())
}
