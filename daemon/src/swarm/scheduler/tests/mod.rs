//! Scheduler tests with virtual time: single-node policy checks, and a small
//! discrete-event world in which several schedulers drive each other. This file holds
//! the helpers the test modules share.

mod choice;
mod faults;
mod origin_assignment;
mod world;

use std::time::Duration;

use shoal_proto::ChunkLayout;

use super::*;

const CHUNK: u32 = 1 << 20;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn layout(chunks: u32) -> ChunkLayout {
    ChunkLayout::new(u64::from(chunks) * u64::from(CHUNK), CHUNK)
}

fn requests(actions: &[Action]) -> Vec<(Source, u32)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Request { source, chunk } => Some((*source, *chunk)),
            _ => None,
        })
        .collect()
}

/// Answers every request successfully, one per `step_ms`, until none is outstanding.
/// `check` sees the number outstanding after each step. Returns whether the scheduler
/// completed, and the time of the last delivery.
fn deliver_until_idle(
    s: &mut Scheduler,
    mut pending: Vec<(Source, u32)>,
    step_ms: u64,
    mut check: impl FnMut(usize),
) -> (bool, u64) {
    let (mut t, mut complete) = (0, false);
    while let Some((source, chunk)) = pending.pop() {
        t += step_ms;
        let acts = s.handle(
            ms(t),
            Event::ChunkArrived {
                source,
                chunk,
                valid: true,
            },
        );
        complete |= acts.contains(&Action::Complete);
        pending.extend(requests(&acts));
        check(pending.len());
    }
    (complete, t)
}

/// A peer that holds `chunks` and is not downloading the blob itself.
fn holding(peer: NodeId, chunks: Vec<bool>) -> Event {
    Event::PeerBitfield {
        peer,
        chunks,
        downloading: false,
    }
}

fn bits(n: u32, have: impl Fn(u32) -> bool) -> Vec<bool> {
    (0..n).map(have).collect()
}

const A: NodeId = NodeId(1);
const B: NodeId = NodeId(2);
const ME: NodeId = NodeId(100);

fn seeds_only() -> Config {
    Config {
        stream_window: 0,
        ..Config::default()
    }
}
