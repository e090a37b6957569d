//! The uploaders: every node's upload slots on virtual time, as the daemon's
//! (`net::transfer` upload slots): a free slot goes to a waiting request by
//! [`UploadOrder`] within its requester's share, and a request that waited its queue
//! wait is refused (Busy).

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use shoal_daemon::net::transfer::QueueWait;
use shoal_proto::ChunkLayout;

use super::network::{Endpoint, Flow};
use super::{Node, Params, UploadOrder};

pub(super) struct Uploaders {
    /// Times each node has begun uploading each chunk ([`UploadOrder`]).
    pub(super) served: Vec<Vec<Vec<u32>>>,
    /// Per uploader, the daemon's queue wait, on virtual time.
    queue_waits: Vec<QueueWait<Duration>>,
}

impl Uploaders {
    pub(super) fn new(total_nodes: usize, layouts: &[ChunkLayout]) -> Uploaders {
        Uploaders {
            served: (0..total_nodes)
                .map(|_| {
                    layouts
                        .iter()
                        .map(|l| vec![0; l.count() as usize])
                        .collect()
                })
                .collect(),
            queue_waits: vec![QueueWait::default(); total_nodes],
        }
    }

    /// Seconds a request to `uploader` waits for a slot before it is refused.
    pub(super) fn queue_wait(&self, p: &Params, uploader: usize) -> f64 {
        p.upload_queue_wait
            .unwrap_or_else(|| self.queue_waits[uploader].wait())
            .as_secs_f64()
    }

    /// Admits waiting requests to free upload slots at `t`; returns the requests refused
    /// for having waited too long, in the order met.
    pub(super) fn admit(
        &mut self,
        p: &Params,
        nodes: &[Node],
        flows: &mut Vec<Flow>,
        t: f64,
        now: Duration,
    ) -> Vec<Flow> {
        let total_nodes = self.served.len();
        let mut refused = Vec::new();
        // Uploads running per uploader and per (uploader, requester), and each uploader's
        // requesters, running or waiting: a requester's share of the slots is the slots
        // over them (`net::transfer` upload slots). Admitted flows have started.
        let mut busy = vec![0usize; total_nodes];
        let mut running: HashMap<(usize, usize), usize> = HashMap::new();
        let mut requesters: HashMap<usize, HashSet<usize>> = HashMap::new();
        for f in flows.iter().filter(|f| f.starts <= t) {
            if let Endpoint::Node(n) = f.src {
                requesters.entry(n).or_default().insert(f.dst);
                if f.admitted {
                    busy[n] += 1;
                    *running.entry((n, f.dst)).or_default() += 1;
                }
            }
        }
        let share = |n: usize| {
            if p.requester_share {
                let r = requesters.get(&n).map_or(1, |r| r.len().max(1));
                p.upload_slots.div_ceil(r)
            } else {
                usize::MAX
            }
        };
        let admissible = |running: &mut HashMap<(usize, usize), usize>, n: usize, dst| {
            let mine = running.entry((n, dst)).or_default();
            if *mine < share(n) {
                *mine += 1;
                true
            } else {
                false
            }
        };
        if p.upload_order != UploadOrder::Fifo {
            // Waiting requests per uploader, best first; admit while slots are free.
            let mut waiting: Vec<(usize, u32, u32, u64, usize)> = flows
                .iter()
                .enumerate()
                .filter(|(_, f)| !f.admitted && f.starts <= t)
                .filter_map(|(k, f)| match f.src {
                    Endpoint::Node(n) if busy[n] < p.upload_slots => {
                        let ordered = p.upload_order != UploadOrder::SeedLeastServed
                            || nodes[n].done.iter().all(|d| *d);
                        let count = if ordered {
                            self.served[n][f.blob][f.chunk as usize]
                        } else {
                            0
                        };
                        let held = match p.upload_order {
                            UploadOrder::LeastServedThenBehind => f.held,
                            _ => 0,
                        };
                        Some((n, count, held, (f.starts * 1e9) as u64, k))
                    }
                    _ => None,
                })
                .collect();
            waiting.sort_unstable();
            for (n, _, _, _, k) in waiting {
                if busy[n] < p.upload_slots && admissible(&mut running, n, flows[k].dst) {
                    self.take_into_slot(&mut busy, &mut flows[k], n, now);
                }
            }
        }
        let mut k = 0;
        while k < flows.len() {
            let f = &mut flows[k];
            if f.admitted || f.starts > t {
                k += 1;
                continue;
            }
            let Endpoint::Node(n) = f.src else {
                k += 1;
                continue;
            };
            if p.upload_order == UploadOrder::Fifo
                && busy[n] < p.upload_slots
                && admissible(&mut running, n, f.dst)
            {
                self.take_into_slot(&mut busy, f, n, now);
                k += 1;
            } else if t - f.starts >= f.wait {
                refused.push(flows.swap_remove(k));
            } else {
                f.queued = true;
                k += 1;
            }
        }
        // A slot left free: the queue drained, and the next hand-off starts a new run.
        for (n, q) in self.queue_waits.iter_mut().enumerate() {
            if busy[n] < p.upload_slots {
                q.drained();
            }
        }
        refused
    }

    /// Uploader `n` takes request `f` into a slot.
    fn take_into_slot(&mut self, busy: &mut [usize], f: &mut Flow, n: usize, now: Duration) {
        busy[n] += 1;
        f.admitted = true;
        self.served[n][f.blob][f.chunk as usize] += 1;
        if f.queued {
            // A freed slot handed to a waiting request.
            self.queue_waits[n].handed_off(now);
        }
    }
}
