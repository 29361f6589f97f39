//! A worker's part in an upgrade that keeps its tunnels (`session/handoff.rs` says what moves,
//! `app/handover.rs` carries it). In the old process: on `Msg::Handover` with a way to the new
//! one, the worker's tunnels and HTTP/2 connections stop reading in waves of [`WAVE`], each
//! goes once it is at rest (within [`HANDOFF_WAIT`]); one that cannot go gets the drain's
//! Close (an HTTP/2 connection: its GOAWAY) as before. An HTTP/2 connection goes as a unit
//! with the inner sessions of its streams: they go after it, or not at all (one left behind
//! with a connection that went drains into its socket pair, which the new process reads: its
//! client still gets its Close). In the new process: `Msg::Adopt` brings tunnels to take over.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::os::fd::RawFd;
use std::sync::atomic::Ordering;
use std::sync::mpsc::Sender;
use std::time::{Duration, Instant};

use super::{Core, Slot};
use crate::reactor::Reactor;
use crate::session::{Departure as Out, Handed, Next, Role, Session};

/// How long a tunnel may take to come to rest once its reads and sends are held; one still
/// busy then stays here and gets the drain's Close.
pub const HANDOFF_WAIT: Duration = Duration::from_secs(2);

/// Sessions of a worker held at once. The others run on meanwhile: the pause a tunnel sees is
/// the time one wave takes, not the whole hand-over's.
const WAVE: usize = 256;

/// What goes as one: a tunnel, or an HTTP/2 connection (`lead`) with the inner sessions of its
/// streams (their place among its socket pairs, slot and generation).
struct Unit {
    lead: (u32, u32),
    streams: Vec<(u32, u32, u32)>,
}

/// A worker's tunnels on their way out.
pub(super) struct Handing {
    to: Sender<Out>,
    /// Units still to go, not held yet.
    queue: VecDeque<Unit>,
    /// Units held, coming to rest, and when they were held.
    held: Vec<(Unit, Instant)>,
    moved: u64,
    http2: u64,
    waiting: u64,
    stayed: BTreeMap<&'static str, u64>,
}

impl Handing {
    fn stayed(&mut self, why: &'static str) {
        *self.stayed.entry(why).or_default() += 1;
    }
}

impl Core {
    /// The upgrade hands tunnels over: the tunnels of this worker that can go, and the HTTP/2
    /// connections (`conns`, not told to drain yet) that can, with their streams' tunnels, are queued to
    /// go in waves (the first held at once); the rest of the tunnels are returned, for the
    /// drain's spread.
    #[cold]
    #[inline(never)]
    pub(super) fn hand_off(
        &mut self,
        r: &mut Reactor<Slot>,
        to: Sender<Out>,
        tunnels: Vec<(u32, u32)>,
        conns: Vec<(u32, u32)>,
    ) -> Vec<(u32, u32)> {
        let mut h = Handing {
            to,
            queue: VecDeque::new(),
            held: Vec::new(),
            moved: 0,
            http2: 0,
            waiting: 0,
            stayed: BTreeMap::new(),
        };
        // Each HTTP/2 connection's socket pairs: which unit, which place; and how many
        // descriptors the unit holds so far (one batch carries it whole).
        let mut units: Vec<Unit> = Vec::new();
        let mut fds_of: Vec<usize> = Vec::new();
        let mut pairs: HashMap<RawFd, (usize, u32)> = HashMap::new();
        for (slot, generation) in conns {
            let Some(e) = r.slots.get_mut(slot, generation) else {
                continue;
            };
            if let Err(why) = e.session.can_hand_off() {
                // It stays: the drain's GOAWAY, as before.
                h.stayed(why);
                self.with_session_of(r, slot, Some(generation), |s, io, env| s.drain(io, env));
                continue;
            }
            // Until its wave, it runs on as it is (no GOAWAY).
            e.session.going();
            let fds = e.session.carried_fds();
            for (place, fd) in fds.iter().skip(1).enumerate() {
                pairs.insert(*fd, (units.len(), place as u32));
            }
            fds_of.push(fds.len());
            units.push(Unit {
                lead: (slot, generation),
                streams: Vec::new(),
            });
        }
        let mut rest = Vec::new();
        for (slot, generation) in tunnels {
            let (can, role) = match r.slots.get_mut(slot, generation) {
                Some(e) => (e.session.can_hand_off(), e.session.role()),
                None => continue,
            };
            if let Err(why) = can {
                h.stayed(why);
                rest.push((slot, generation));
                continue;
            }
            if role != Role::Stream {
                units.push(Unit {
                    lead: (slot, generation),
                    streams: Vec::new(),
                });
                continue;
            }
            // A stream's tunnel goes with its connection, or stays.
            let with = self
                .stream_peers
                .get(&slot)
                .filter(|(g, _)| *g == generation)
                .and_then(|(_, fd)| pairs.get(fd));
            match with {
                Some(&(u, place)) if fds_of[u] + 2 <= crate::session::FDS_MAX => {
                    fds_of[u] += 2;
                    units[u].streams.push((place, slot, generation));
                }
                _ => {
                    h.stayed("http2");
                    rest.push((slot, generation));
                }
            }
        }
        h.queue.extend(units);
        self.next_wave(r, &mut h);
        self.handing = Some(h);
        rest
    }

    /// Hold units from the queue until a wave's worth are held (one whose lead can no longer
    /// go gets the drain's Close now, its streams too).
    fn next_wave(&mut self, r: &mut Reactor<Slot>, h: &mut Handing) {
        let mut held: usize = h.held.iter().map(|(u, _)| 1 + u.streams.len()).sum();
        while held < WAVE
            && let Some(mut u) = h.queue.pop_front()
        {
            let (slot, generation) = u.lead;
            if let Err(why) = self.hold(r, slot, generation) {
                // (`hold` has given the lead its Close already.)
                h.stayed(why);
                for (_, slot, generation) in u.streams {
                    h.stayed(why);
                    self.fail(r, slot, generation);
                }
                continue;
            }
            let mut streams = Vec::with_capacity(u.streams.len());
            for (place, slot, generation) in u.streams {
                match self.hold(r, slot, generation) {
                    Ok(()) => streams.push((place, slot, generation)),
                    Err(why) => h.stayed(why),
                }
            }
            u.streams = streams;
            held += 1 + u.streams.len();
            h.held.push((u, Instant::now()));
        }
    }

    /// Stop one session's reads to hand it over; one that can no longer go gets the drain's
    /// Close now.
    fn hold(
        &mut self,
        r: &mut Reactor<Slot>,
        slot: u32,
        generation: u32,
    ) -> Result<(), &'static str> {
        let mut result = Err("closing");
        self.with_session_of(r, slot, Some(generation), |s, io, env| {
            match s.hand_off(io, env) {
                Ok(next) => {
                    result = Ok(());
                    next
                }
                Err(why) => {
                    result = Err(why);
                    s.hand_off_failed(io, env)
                }
            }
        });
        result
    }

    /// A session held that will not go: it reads again and gets the drain's Close.
    fn fail(&mut self, r: &mut Reactor<Slot>, slot: u32, generation: u32) {
        self.with_session_of(r, slot, Some(generation), |s, io, env| {
            s.hand_off_failed(io, env)
        });
    }

    /// A unit whose lead cannot go (`why`): it and its streams stay, each with the drain's
    /// Close (the lead an HTTP/2 connection: its GOAWAY).
    fn fail_unit(&mut self, r: &mut Reactor<Slot>, h: &mut Handing, u: Unit, why: &'static str) {
        let (slot, generation) = u.lead;
        h.stayed(why);
        self.fail(r, slot, generation);
        for (_, s, g) in u.streams {
            h.stayed(why);
            self.fail(r, s, g);
        }
    }

    /// Where a held session stands: gone (None: it ended meanwhile), at rest, or no longer
    /// able to go.
    fn rest_of(
        r: &mut Reactor<Slot>,
        slot: u32,
        generation: u32,
    ) -> Option<Result<bool, &'static str>> {
        r.slots
            .get_mut(slot, generation)
            .map(|e| e.session.handoff_ready())
    }

    /// A session at rest leaves this worker: what waits to be sent is taken out, the slot
    /// freed, the gauges moved. `Err`: it cannot go after all (too much waiting).
    fn export(
        &mut self,
        r: &mut Reactor<Slot>,
        slot: u32,
        generation: u32,
        h: &mut Handing,
    ) -> Result<Handed, &'static str> {
        let mut unsent = Err("closing");
        self.with_session_of(r, slot, Some(generation), |s, io, _| {
            unsent = s.take_unsent(io);
            Next::Continue
        });
        let unsent = unsent?;
        h.waiting += unsent.iter().map(|u| u.len() as u64).sum::<u64>();
        let entry = r.slots.remove(slot);
        if entry.timer_at != 0 {
            r.wheel.remove(slot, entry.timer_at);
        }
        let m = &self.spec.metrics;
        match entry.session.role() {
            Role::Connection => {
                m.tunnel_left();
                m.active.fetch_sub(1, Ordering::Relaxed);
            }
            Role::Stream => {
                self.stream_peers.remove(&slot);
                m.tunnel_left();
                m.h2.stream_sessions.fetch_sub(1, Ordering::Relaxed);
            }
            Role::Http2 => {
                m.h2.closed();
                m.active.fetch_sub(1, Ordering::Relaxed);
            }
        }
        if entry.session.role() == Role::Http2 {
            h.http2 += 1;
        } else {
            h.moved += 1;
        }
        Ok(entry.session.export(r.now_ms(), unsent))
    }

    /// After every turn while tunnels are on their way out: units at rest go, those that can
    /// no longer go (or took too long) get the drain's Close; once none is left, the worker
    /// says it is through. (Out of line: the worker's loop asks for it after every turn, and
    /// only an upgrade comes here.)
    #[cold]
    #[inline(never)]
    pub(super) fn hand_off_due(&mut self, r: &mut Reactor<Slot>) {
        let Some(mut h) = self.handing.take() else {
            return;
        };
        let mut waiting = Vec::new();
        for (mut u, held) in std::mem::take(&mut h.held) {
            let late = held.elapsed() >= HANDOFF_WAIT;
            let (slot, generation) = u.lead;
            let lead = match Self::rest_of(r, slot, generation) {
                // It ended meanwhile (its client went): nothing to hand over.
                None => Err("closing"),
                Some(Ok(false)) if late => Err("timeout"),
                Some(other) => other,
            };
            if let Err(why) = lead {
                self.fail_unit(r, &mut h, u, why);
                continue;
            }
            // Its streams: those that ended drop out, those that can no longer go stay.
            let mut all_ready = lead == Ok(true);
            let mut streams = Vec::with_capacity(u.streams.len());
            for (place, s, g) in u.streams {
                match Self::rest_of(r, s, g) {
                    None => {}
                    Some(Ok(true)) => streams.push((place, s, g)),
                    Some(Ok(false)) if !late => {
                        all_ready = false;
                        streams.push((place, s, g));
                    }
                    Some(Ok(false)) => {
                        h.stayed("timeout");
                        self.fail(r, s, g);
                    }
                    Some(Err(why)) => {
                        h.stayed(why);
                        self.fail(r, s, g);
                    }
                }
            }
            u.streams = streams;
            if !all_ready {
                waiting.push((u, held));
                continue;
            }
            let mut handed = match self.export(r, slot, generation, &mut h) {
                Ok(t) => t,
                Err(why) => {
                    self.fail_unit(r, &mut h, u, why);
                    continue;
                }
            };
            for (place, s, g) in u.streams {
                match self.export(r, s, g, &mut h) {
                    Ok(t) => handed.streams.push((place, t)),
                    Err(why) => {
                        h.stayed(why);
                        self.fail(r, s, g);
                    }
                }
            }
            if let Err(e) = h.to.send(Out::Tunnel(handed)) {
                // The thread that carries them is gone: the tunnel is lost; say so.
                let Out::Tunnel(t) = e.0 else { unreachable!() };
                crate::session::refuse_handed(t, "the upgrade ended");
            }
        }
        h.held = waiting;
        self.next_wave(r, &mut h);
        if h.held.is_empty() {
            let _ = h.to.send(Out::Done {
                moved: h.moved,
                http2: h.http2,
                waiting: h.waiting,
                stayed: h.stayed,
            });
            return;
        }
        self.handing = Some(h);
    }

    /// Tunnels handed over by the old process, to take over here (or refuse: over this
    /// worker's session cap, or not possible under this configuration). An HTTP/2
    /// connection's streams are taken after it, or refused with it.
    #[cold]
    #[inline(never)]
    pub(super) fn adopt(&mut self, r: &mut Reactor<Slot>, tunnels: Vec<Handed>) {
        for t in tunnels {
            if r.slots.len() + 1 + t.streams.len() > self.spec.max_sessions {
                self.spec.metrics.rejected.fetch_add(1, Ordering::Relaxed);
                crate::session::refuse_handed(t, "this worker is at max_connections");
                continue;
            }
            let Handed { fds, desc, streams } = t;
            if self.adopt_one(r, &fds, &desc, None).is_err() {
                crate::session::refuse_handed(Handed { fds, desc, streams }, "refused");
                continue;
            }
            for (place, s) in streams {
                // The connection's end of this stream's socket pair (its descriptor came
                // with it: the same number here).
                let peer = fds.get(1 + place as usize).copied().unwrap_or(-1);
                if self.adopt_one(r, &s.fds, &s.desc, Some(peer)).is_err() {
                    crate::session::refuse_handed(s, "refused");
                }
            }
        }
    }

    /// One session taken over and started (`peer`: an HTTP/2 stream's, the connection's end
    /// of its socket pair). `Err` (said in the log): not taken; its sockets are the caller's.
    fn adopt_one(
        &mut self,
        r: &mut Reactor<Slot>,
        fds: &[RawFd],
        desc: &[u8],
        peer: Option<RawFd>,
    ) -> Result<(), ()> {
        let now = r.now_ms();
        let (s, unsent) = match Session::adopt(&self.cfg, fds, desc, now) {
            Ok(s) if (s.0.role() == Role::Stream) == peer.is_some() => s,
            Ok(_) => {
                tracing::warn!("upgrade: a stream's tunnel without its connection, or the reverse");
                return Err(());
            }
            Err(why) => {
                tracing::warn!("upgrade: a tunnel handed over is not taken ({why})");
                return Err(());
            }
        };
        let role = s.role();
        let (key, generation) = r.slots.insert(|_, _| Slot {
            session: s,
            timer_at: 0,
            accepted_ms: now,
        });
        let m = &self.spec.metrics;
        match role {
            Role::Connection => {
                m.active.fetch_add(1, Ordering::Relaxed);
                m.tunnel_taken();
            }
            Role::Stream => {
                m.h2.stream_sessions.fetch_add(1, Ordering::Relaxed);
                m.tunnel_taken();
                if let Some(p) = peer {
                    self.stream_peers.insert(key, (generation, p));
                }
            }
            Role::Http2 => {
                m.active.fetch_add(1, Ordering::Relaxed);
                m.h2.taken();
            }
        }
        self.with_session(r, key, |s, io, env| {
            s.resume(unsent, io, env);
            Next::Continue
        });
        Ok(())
    }
}
