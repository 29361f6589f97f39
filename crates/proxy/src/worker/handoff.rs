//! A worker's part in an upgrade that keeps its tunnels (`session/handoff.rs` says what moves,
//! `app/handover.rs` carries it). In the old process: on `Msg::Handover` with a way to the new
//! one, the worker's tunnels stop reading in waves of [`WAVE`], each goes once it is at rest
//! (within [`HANDOFF_WAIT`]); one that cannot go gets the drain's Close as before. In the new process:
//! `Msg::Adopt` brings tunnels to take over.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::mpsc::Sender;
use std::time::{Duration, Instant};

use super::{Core, Slot};
use crate::reactor::Reactor;
use crate::session::{Departure as Out, Handed, Next, Session, Stage};

/// How long a tunnel may take to come to rest once its reads and sends are held; one still
/// busy then stays here and gets the drain's Close.
pub const HANDOFF_WAIT: Duration = Duration::from_secs(2);

/// Tunnels of a worker held at once. The others run on meanwhile: the pause a tunnel sees is
/// the time one wave takes, not the whole hand-over's.
const WAVE: usize = 256;

/// A worker's tunnels on their way out.
pub(super) struct Handing {
    to: Sender<Out>,
    /// Tunnels still to go, not held yet: slot and generation.
    queue: VecDeque<(u32, u32)>,
    /// Tunnels held, coming to rest: slot, generation, and when they were held.
    slots: Vec<(u32, u32, Instant)>,
    moved: u64,
    waiting: u64,
    stayed: BTreeMap<&'static str, u64>,
}

impl Core {
    /// The upgrade hands tunnels over: the tunnels of this worker that can go are queued to go
    /// in waves (the first held at once); the rest are returned, for the drain's spread.
    #[cold]
    #[inline(never)]
    pub(super) fn hand_off(
        &mut self,
        r: &mut Reactor<Slot>,
        to: Sender<Out>,
        tunnels: Vec<(u32, u32)>,
    ) -> Vec<(u32, u32)> {
        let mut h = Handing {
            to,
            queue: VecDeque::new(),
            slots: Vec::new(),
            moved: 0,
            waiting: 0,
            stayed: BTreeMap::new(),
        };
        let mut rest = Vec::new();
        for (slot, generation) in tunnels {
            let can = match r.slots.get_mut(slot, generation) {
                Some(e) => e.session.can_hand_off(),
                None => continue,
            };
            match can {
                Ok(()) => h.queue.push_back((slot, generation)),
                Err(why) => {
                    *h.stayed.entry(why).or_default() += 1;
                    rest.push((slot, generation));
                }
            }
        }
        self.next_wave(r, &mut h);
        self.handing = Some(h);
        rest
    }

    /// Hold tunnels from the queue until a wave's worth are held (one that can no longer go
    /// gets the drain's Close now).
    fn next_wave(&mut self, r: &mut Reactor<Slot>, h: &mut Handing) {
        while h.slots.len() < WAVE
            && let Some((slot, generation)) = h.queue.pop_front()
        {
            let mut result = Err("closing");
            self.with_session_of(r, slot, Some(generation), |s, io, env| {
                match s.hand_off(io, env) {
                    Ok(next) => {
                        result = Ok(());
                        next
                    }
                    Err(why) => {
                        result = Err(why);
                        s.drain_tunnel(io, env)
                    }
                }
            });
            match result {
                Ok(()) => h.slots.push((slot, generation, Instant::now())),
                Err(why) => *h.stayed.entry(why).or_default() += 1,
            }
        }
    }

    /// After every turn while tunnels are on their way out: those at rest go, those that can
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
        for (slot, generation, held) in std::mem::take(&mut h.slots) {
            let late = held.elapsed() >= HANDOFF_WAIT;
            let ready = match r.slots.get_mut(slot, generation) {
                // It ended meanwhile (its client went): nothing to hand over.
                None => continue,
                Some(e) if e.session.stage() != Stage::Tunnel => Err("closing"),
                Some(e) => e.session.handoff_ready(),
            };
            match ready {
                Ok(true) => {
                    let mut unsent = Err("closing");
                    self.with_session_of(r, slot, Some(generation), |s, io, _| {
                        unsent = s.take_unsent(io);
                        Next::Continue
                    });
                    let unsent = match unsent {
                        Ok(u) => u,
                        Err(why) => {
                            *h.stayed.entry(why).or_default() += 1;
                            self.with_session_of(r, slot, Some(generation), |s, io, env| {
                                s.hand_off_failed(io, env)
                            });
                            continue;
                        }
                    };
                    h.waiting += unsent.iter().map(|u| u.len() as u64).sum::<u64>();
                    let entry = r.slots.remove(slot);
                    if entry.timer_at != 0 {
                        r.wheel.remove((slot, generation), entry.timer_at);
                    }
                    let m = &self.spec.metrics;
                    m.tunnel_left();
                    m.active.fetch_sub(1, Ordering::Relaxed);
                    let handed = entry.session.export(r.now_ms(), unsent);
                    if let Err(e) = h.to.send(Out::Tunnel(handed)) {
                        // The thread that carries them is gone: the tunnel is lost; say so.
                        let Out::Tunnel(t) = e.0 else { unreachable!() };
                        crate::session::refuse_handed(t, "the upgrade ended");
                    }
                    h.moved += 1;
                }
                Ok(false) if !late => waiting.push((slot, generation, held)),
                Ok(false) | Err(_) => {
                    let why = match ready {
                        Err(why) => why,
                        _ => "timeout",
                    };
                    *h.stayed.entry(why).or_default() += 1;
                    self.with_session_of(r, slot, Some(generation), |s, io, env| {
                        s.hand_off_failed(io, env)
                    });
                }
            }
        }
        h.slots = waiting;
        self.next_wave(r, &mut h);
        if h.slots.is_empty() {
            let _ = h.to.send(Out::Done {
                moved: h.moved,
                waiting: h.waiting,
                stayed: h.stayed,
            });
            return;
        }
        self.handing = Some(h);
    }

    /// Tunnels handed over by the old process, to take over here (or refuse: over this
    /// worker's session cap, or not possible under this configuration).
    #[cold]
    #[inline(never)]
    pub(super) fn adopt(&mut self, r: &mut Reactor<Slot>, tunnels: Vec<Handed>) {
        for t in tunnels {
            if r.slots.len() >= self.spec.max_sessions {
                self.spec.metrics.rejected.fetch_add(1, Ordering::Relaxed);
                crate::session::refuse_handed(t, "this worker is at max_connections");
                continue;
            }
            let now = r.now_ms();
            let (s, unsent) = match Session::adopt(&self.cfg, t.fds, &t.desc, now) {
                Ok(s) => s,
                Err(why) => {
                    crate::session::refuse_handed(t, &why);
                    continue;
                }
            };
            let (key, _) = r.slots.insert(|_, _| Slot {
                session: s,
                timer_at: 0,
                accepted_ms: now,
            });
            let m = &self.spec.metrics;
            m.active.fetch_add(1, Ordering::Relaxed);
            m.tunnel_taken();
            self.with_session(r, key, |s, io, env| {
                s.resume(unsent, io, env);
                Next::Continue
            });
        }
    }
}
