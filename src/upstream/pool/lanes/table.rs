//! One credential's lane bookkeeping ([`Table`]): which lane sockets it has, which named lanes
//! each carries, which lanes are busy, and the head each idle lane holds (docs/architecture.md,
//! "Lanes"). Pure state: no socket, no task, no clock but the one [`Table::choose`] is given,
//! so every rule is unit-tested here.

use tokio::time::Instant;

use crate::continuation::index::{Found, HeadIndex};
use crate::continuation::{Affinity, Head, Matched};

/// Responses in flight on one socket, across its lanes (the upstream's limit).
pub const MAX_IN_FLIGHT: usize = 16;
/// Named lanes on one socket (the upstream's limit); a refused lane lowers it for that socket.
pub const MAX_LANES: usize = 32;

/// The `stream_id` of lane `lane` (the same names on every socket).
pub fn lane_name(lane: usize) -> String {
    format!("wsbridge-{lane}")
}

/// The lane a `stream_id` names, if it is one of ours.
pub fn lane_of(name: &str) -> Option<usize> {
    let lane: usize = name.strip_prefix("wsbridge-")?.parse().ok()?;
    (lane < MAX_LANES && lane_name(lane) == name).then_some(lane)
}

/// A lane's key in the head index: its socket and its number.
fn key(mux: u64, lane: usize) -> u64 {
    (mux << 6) | lane as u64
}

fn split(key: u64) -> (u64, usize) {
    (key >> 6, (key & 63) as usize)
}

/// The lanes of one credential.
#[derive(Debug, Default)]
pub struct Table {
    muxes: Vec<Mux>,
    /// Heads of idle lanes (by lane key), and stored heads.
    index: HeadIndex,
    /// Heads of busy lanes: the upstream keeps each until the turn on its lane completes, so
    /// another lane of the same socket can fork from it meanwhile.
    forks: HeadIndex,
    /// Lane sockets being opened.
    pub connecting: usize,
}

/// One lane socket.
#[derive(Debug)]
struct Mux {
    id: u64,
    lanes: Vec<Lane>,
    in_flight: usize,
    /// Lanes this socket may have: [`MAX_LANES`], lower once the upstream refused one.
    lane_limit: usize,
    /// No new turn starts on it (too old, or the upstream reported its connection limit).
    retiring: bool,
    /// Turns started on it.
    turns: u64,
}

#[derive(Debug, Default)]
struct Lane {
    busy: bool,
    head: Option<Head>,
    /// When it last went idle (the least recently used head is given up first).
    since: Option<Instant>,
}

/// A lane taken for a turn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Taken {
    pub mux: u64,
    pub lane: usize,
    /// The head the turn continues (this lane's own, or a stored one).
    pub matched: Option<Matched>,
    /// The lane held another conversation's head, now given up.
    pub evicted: bool,
    /// The socket carried a turn before this one.
    pub reused: bool,
}

/// What a checkout does next.
#[derive(Debug, PartialEq, Eq)]
pub enum Pick {
    Take(Taken),
    /// Open a new lane socket (counted in `connecting`); the turn continues this stored head.
    Connect(Option<Matched>),
    /// Nothing fits now: wait for a lane, a slot or a socket being opened.
    Wait,
}

/// What a lane holds after its turn.
#[derive(Debug)]
pub enum Finish {
    /// This (`None`: nothing the upstream is known to keep).
    Head(Option<Head>),
    /// Nothing was sent: the head it had before.
    Unused,
}

/// `Affinity::Only` found nothing that holds what it needs.
#[derive(Debug, PartialEq, Eq)]
pub struct NoMatch;

impl Table {
    /// The next step for a turn that wants `affinity`. A lane holding the wanted head is taken
    /// if its socket has a slot; if not, the turn waits for one while `patient`, else starts
    /// afresh elsewhere. A new conversation takes a free lane on the socket with the fewest
    /// turns in flight, else a new socket (up to `max_sockets`; one connect at a time), else
    /// the least recently used idle head.
    pub fn choose(
        &mut self,
        affinity: &Affinity<'_>,
        patient: bool,
        max_sockets: usize,
        now: Instant,
    ) -> Result<Pick, NoMatch> {
        let mut stored = None;
        match self.find(affinity) {
            Some(Found::Socket(key, matched)) => {
                let (mux, lane) = split(key);
                if self.mux(mux).is_some_and(Mux::has_slot) {
                    return Ok(Pick::Take(self.take(mux, lane, Some(matched))));
                }
                if patient {
                    return Ok(Pick::Wait);
                }
            }
            Some(Found::Stored(matched)) => stored = Some(matched),
            None => {}
        }
        if let Some((mux, lane, matched)) = self.fork(affinity) {
            return Ok(Pick::Take(self.take(mux, lane, Some(matched))));
        }
        if stored.is_none() && matches!(affinity, Affinity::Only { .. }) {
            return Err(NoMatch);
        }
        let free = self
            .muxes
            .iter()
            .filter(|mux| mux.has_slot())
            .filter_map(|mux| Some((mux.in_flight, mux.id, mux.free_lane()?)))
            .min();
        if let Some((_, mux, lane)) = free {
            return Ok(Pick::Take(self.take(mux, lane, stored)));
        }
        if self.connecting > 0 {
            return Ok(Pick::Wait);
        }
        if self.muxes.len() < max_sockets {
            self.connecting += 1;
            return Ok(Pick::Connect(stored));
        }
        let least_recent = self
            .muxes
            .iter()
            .filter(|mux| mux.has_slot())
            .flat_map(|mux| {
                mux.lanes.iter().enumerate().filter_map(move |(n, lane)| {
                    (!lane.busy && n < mux.lane_limit).then_some((
                        lane.since.unwrap_or(now),
                        mux.id,
                        n,
                    ))
                })
            })
            .min();
        match least_recent {
            Some((_, mux, lane)) => Ok(Pick::Take(self.take(mux, lane, stored))),
            None => Ok(Pick::Wait),
        }
    }

    /// The idle lane whose head `affinity` wants (on a socket still taking turns), or a stored
    /// head.
    fn find(&self, affinity: &Affinity<'_>) -> Option<Found> {
        self.index.find(affinity, |key| {
            let (mux, lane) = split(key);
            let mux = self.mux(mux).filter(|mux| !mux.retiring)?;
            mux.lanes
                .get(lane)
                .filter(|l| !l.busy && lane < mux.lane_limit)?
                .head
                .as_ref()
        })
    }

    /// A busy lane holding the wanted head, and a free lane on its socket to fork it on.
    fn fork(&self, affinity: &Affinity<'_>) -> Option<(u64, usize, Matched)> {
        let forkable = |mux: &&Mux| mux.has_slot() && mux.free_lane().is_some();
        let found = self.forks.find(affinity, |key| {
            let (mux, lane) = split(key);
            let mux = self.mux(mux).filter(forkable)?;
            mux.lanes.get(lane).filter(|l| l.busy)?.head.as_ref()
        });
        let Some(Found::Socket(key, matched)) = found else {
            return None;
        };
        let mux = self.mux(split(key).0)?;
        Some((mux.id, mux.free_lane()?, matched))
    }

    /// Marks a lane busy (a new one when `lane` is one past the last) for one turn.
    fn take(&mut self, id: u64, lane: usize, matched: Option<Matched>) -> Taken {
        let (index, forks) = (&mut self.index, &mut self.forks);
        let Some(mux) = self.muxes.iter_mut().find(|mux| mux.id == id) else {
            unreachable!("a lane is only taken on a socket of the table")
        };
        if lane == mux.lanes.len() {
            mux.lanes.push(Lane::default());
        }
        let reused = mux.turns > 0;
        mux.turns += 1;
        mux.in_flight += 1;
        let slot = &mut mux.lanes[lane];
        slot.busy = true;
        let own = matched.as_ref().map(|m| &m.previous);
        let mut evicted = false;
        // The head stays with the lane (unindexed) until the turn ends, in case nothing is sent.
        if let Some(head) = &slot.head {
            index.remove(key(id, lane), head);
            evicted = own != Some(&head.response_id);
            if evicted {
                slot.head = None;
            } else {
                forks.insert(key(id, lane), head);
            }
        }
        Taken {
            mux: id,
            lane,
            matched,
            evicted,
            reused,
        }
    }

    /// A new lane socket is open: lane 0 is taken at once by the turn that opened it.
    pub fn add_mux(&mut self, id: u64, matched: Option<Matched>) -> Taken {
        self.connecting = self.connecting.saturating_sub(1);
        self.muxes.push(Mux {
            id,
            lanes: Vec::new(),
            in_flight: 0,
            lane_limit: MAX_LANES,
            retiring: false,
            turns: 0,
        });
        self.take(id, 0, matched)
    }

    /// The turn on a lane ended; `head` says what the lane now holds. Returns true when the
    /// socket is retiring and now idle.
    pub fn finish(&mut self, id: u64, lane: usize, head: Finish, now: Instant) -> bool {
        let Some(mux) = self.muxes.iter_mut().find(|mux| mux.id == id) else {
            return false;
        };
        let Some(slot) = mux.lanes.get_mut(lane).filter(|slot| slot.busy) else {
            return false;
        };
        slot.busy = false;
        slot.since = Some(now);
        mux.in_flight -= 1;
        let keep = lane < mux.lane_limit && !mux.retiring;
        if let Some(old) = &slot.head {
            self.forks.remove(key(id, lane), old);
        }
        slot.head = match head {
            Finish::Head(head) => head,
            Finish::Unused => slot.head.take(),
        }
        .filter(|_| keep);
        if let Some(head) = &slot.head {
            self.index.insert(key(id, lane), head);
            self.index.remember_stored(head);
        }
        mux.retiring && mux.in_flight == 0
    }

    /// The upstream refused lane `lane` (`websocket_stream_limit_reached`): this socket keeps
    /// the lanes below it and opens no more.
    pub fn refuse_lane(&mut self, id: u64, lane: usize, now: Instant) {
        self.finish(id, lane, Finish::Head(None), now);
        if let Some(mux) = self.muxes.iter_mut().find(|mux| mux.id == id) {
            mux.lane_limit = mux.lane_limit.min(lane);
        }
    }

    /// No new turn starts on this socket; true when it is idle (it can close now).
    pub fn retire(&mut self, id: u64) -> bool {
        let Some(mux) = self.muxes.iter_mut().find(|mux| mux.id == id) else {
            return true;
        };
        mux.retiring = true;
        for (lane, slot) in mux.lanes.iter_mut().enumerate() {
            if let Some(head) = slot.head.take() {
                self.index.remove(key(id, lane), &head);
                self.forks.remove(key(id, lane), &head);
            }
        }
        mux.in_flight == 0
    }

    /// The socket closed: its lanes and their heads are gone.
    pub fn remove_mux(&mut self, id: u64) {
        self.retire(id);
        self.muxes.retain(|mux| mux.id != id);
        self.index.expire_stored();
    }

    /// True when `id` has no turn in flight (or is gone).
    pub fn is_idle(&self, id: u64) -> bool {
        self.mux(id).is_none_or(|mux| mux.in_flight == 0)
    }

    /// True when `id` takes no new turn (or is gone).
    pub fn is_retiring(&self, id: u64) -> bool {
        self.mux(id).is_none_or(|mux| mux.retiring)
    }

    /// Lanes busy or holding a head.
    pub fn lanes_in_use(&self) -> usize {
        self.muxes
            .iter()
            .flat_map(|mux| &mux.lanes)
            .filter(|lane| lane.busy || lane.head.is_some())
            .count()
    }

    /// Lane sockets open: (idle, busy).
    pub fn sockets(&self) -> (usize, usize) {
        let busy = self.muxes.iter().filter(|mux| mux.in_flight > 0).count();
        (self.muxes.len() - busy, busy)
    }

    /// True while the table holds anything worth keeping the credential's state for.
    pub fn holds_anything(&self) -> bool {
        !self.muxes.is_empty() || self.connecting > 0 || self.index.has_stored()
    }

    fn mux(&self, id: u64) -> Option<&Mux> {
        self.muxes.iter().find(|mux| mux.id == id)
    }
}

impl Mux {
    fn has_slot(&self) -> bool {
        !self.retiring && self.in_flight < MAX_IN_FLIGHT
    }

    /// An idle lane without a head, else a lane not used yet.
    fn free_lane(&self) -> Option<usize> {
        let limit = self.lane_limit;
        self.lanes
            .iter()
            .take(limit)
            .position(|lane| !lane.busy && lane.head.is_none())
            .or((self.lanes.len() < limit).then_some(self.lanes.len()))
    }
}

#[cfg(test)]
mod tests;
