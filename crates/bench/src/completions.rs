//! A load-generator worker's completions: connects, sends, and received bytes (the handshake
//! response, then frames, checked against what was sent).

use super::worker::*;
use super::*;

impl BenchWorker {
    pub(super) fn dispatch(&mut self, cq: Cqe) {
        let Some(op) = cq.ud.op() else { return };
        let (slot, generation) = (cq.ud.slot(), cq.ud.generation());
        match op {
            Op::Connect => self.on_connect(slot, generation, cq.res),
            Op::Recv => self.on_recv(slot, generation, cq),
            Op::Send => self.on_send(slot, generation, cq.res),
            Op::Cancel => {
                self.r
                    .slots
                    .get_mut(slot, generation)
                    .expect("live")
                    .cancels -= 1;
            }
            _ => {}
        }
        self.reap_conn(slot, generation);
        self.schedule(slot, generation);
    }

    pub(super) fn on_connect(&mut self, slot: u32, generation: u32, res: i32) {
        let Some((_, c, mut sys)) = self.r.split(slot, Some(generation)) else {
            return;
        };
        c.sock.connect_done();
        if c.phase != Phase::Connecting {
            return;
        }
        self.connecting -= 1;
        if res < 0 {
            c.phase = Phase::Handshake; // counted as failed in fail()
            return self.fail(slot, generation, format!("connect:{}", errno(-res)));
        }
        c.phase = Phase::Handshake;
        c.sock.mark_ready();
        c.cancels += c.sock.sync_recv(&mut sys, ConnId::CLIENT, true, UNCAPPED);
        let len = self.r.ring.heap.len(self.handshake) as u32;
        self.send_heap(slot, generation, self.handshake, len);
    }

    pub(super) fn on_send(&mut self, slot: u32, generation: u32, res: i32) {
        let Some((_, c, mut sys)) = self.r.split(slot, Some(generation)) else {
            return;
        };
        let dead = c.phase == Phase::Dead;
        if let Sent::Failed(e) = c.sock.on_sent(&mut sys, ConnId::CLIENT, res, dead) {
            c.errored = true;
            self.error(format!("send:{}", errno(e)));
            self.kill(slot, Some(generation));
        }
    }

    pub(super) fn on_recv(&mut self, slot: u32, generation: u32, cq: Cqe) {
        let c = self.r.slots.get_mut(slot, generation).expect("live");
        c.sock.recv_ended(cq.more());
        if cq.res <= 0 {
            self.r.ring.pool.release_of(&cq);
            let phase = c.phase;
            match -cq.res {
                0 => {
                    if phase == Phase::Closing {
                        // The server closed after our Close: clean enough.
                        self.closed_clean += 1;
                        self.kill(slot, Some(generation));
                    } else if phase != Phase::Dead {
                        let kind = if phase == Phase::Handshake {
                            "handshake:closed"
                        } else {
                            "closed-by-peer"
                        };
                        if phase == Phase::Handshake {
                            return self.fail(slot, generation, kind.into());
                        }
                        c.errored = true;
                        self.error(kind.into());
                        self.kill(slot, Some(generation));
                    }
                }
                libc::ECANCELED => {}
                libc::ENOBUFS => self.rearm.push((slot, generation)),
                e => {
                    if phase == Phase::Handshake {
                        return self.fail(slot, generation, format!("handshake:{}", errno(e)));
                    }
                    if phase != Phase::Dead {
                        c.errored = true;
                        self.error(format!("recv:{}", errno(e)));
                        self.kill(slot, Some(generation));
                    }
                }
            }
            return;
        }
        let bid = cq.buf_id().expect("data comes in a buffer");
        // Through the transport (TLS decrypts), then copied into a reused scratch buffer (no
        // allocation per message) so the buffer goes straight back.
        let chunk = Chunk {
            src: Src::Pool(bid),
            off: 0,
            len: cq.res as u32,
        };
        let mut data = std::mem::take(&mut self.scratch);
        data.clear();
        let (_, c, mut sys) = self.r.split(slot, Some(generation)).expect("live");
        match c.sock.received(&mut sys, ConnId::CLIENT, chunk) {
            Ok(Some(plain)) => {
                data.extend_from_slice(sys.data_of(plain));
                sys.release(plain);
            }
            Ok(None) => {}
            Err(e) => {
                self.scratch = data;
                let why = match e {
                    ringway_proxy::tls::Fail::Tls(e) => format!("tls:{e}"),
                    ringway_proxy::tls::Fail::PlainHttp => "tls:plain".to_string(),
                };
                if c.phase == Phase::Handshake {
                    return self.fail(slot, generation, why);
                }
                c.errored = true;
                self.error(why);
                return self.kill(slot, Some(generation));
            }
        }
        self.on_bytes(slot, generation, &data);
        self.scratch = data;
        if let Some(c) = self.r.slots.get_mut(slot, generation)
            && c.sock.recv_state() == Recv::Off
            && c.phase != Phase::Dead
            && cq.res > 0
        {
            self.rearm.push((slot, generation));
        }
    }

    pub(super) fn on_bytes(&mut self, slot: u32, generation: u32, mut data: &[u8]) {
        let c = self.r.slots.get_mut(slot, generation).expect("live");
        if c.phase == Phase::Handshake {
            c.head.extend_from_slice(data);
            // The proxy's own codec reads the 101 (the handshake's answer has no body).
            let n = match ringway_proxy::http::parse_response(&c.head, 16384, true) {
                Ok(Some(r)) if r.status == 101 => r.head_len,
                Ok(Some(r)) => {
                    return self.fail(slot, generation, format!("handshake:HTTP {}", r.status));
                }
                Ok(None) => return,
                Err(_) => {
                    return self.fail(slot, generation, "handshake:malformed response".into());
                }
            };
            let accept_ok =
                ringway_proxy::http::header_values(&c.head[..n], "sec-websocket-accept")
                    .any(|v| v == self.accept_key.as_bytes());
            if !accept_ok {
                return self.fail(
                    slot,
                    generation,
                    "handshake:bad Sec-WebSocket-Accept".into(),
                );
            }
            let rest = c.head.split_off(n);
            c.head = Vec::new();
            self.connected(slot, generation);
            if !rest.is_empty() {
                self.on_bytes(slot, generation, &rest);
            }
            return;
        }
        while !data.is_empty() {
            let Some(c) = self.r.slots.get_mut(slot, generation) else {
                return;
            };
            if c.phase == Phase::Dead {
                return;
            }
            let Ok(step) = c.rx.step(data) else {
                c.errored = true;
                self.error("protocol:bad frame".into());
                return self.kill(slot, Some(generation));
            };
            let taken = &data[..step.used];
            data = &data[step.used..];
            let h = match step.piece {
                ws::Piece::Partial => continue,
                ws::Piece::Header(h) => {
                    if h.mask.is_some() {
                        c.errored = true;
                        self.error("protocol:masked frame from server".into());
                        return self.kill(slot, Some(generation));
                    }
                    if h.opcode == opcode::BINARY
                        && self.opts.mode == Mode::Throughput
                        && h.len != self.payload.len() as u64
                    {
                        c.errored = true;
                        self.error("echo:wrong length".into());
                        return self.kill(slot, Some(generation));
                    }
                    if h.opcode == opcode::PING {
                        // Answer with a Pong carrying the same payload (masked, as a client).
                        let n = (h.len as usize).min(data.len());
                        let pong = ws::frame(opcode::PONG, &data[..n], Some([1, 2, 3, 4]));
                        let len = pong.len() as u32;
                        let id = self.r.ring.heap.put(pong);
                        self.send_heap(slot, generation, id, len);
                    }
                    let c = self.r.slots.get_mut(slot, generation).expect("live");
                    c.rx_cur = Some(h);
                    c.rx_offset = 0;
                    h
                }
                ws::Piece::Payload => {
                    let Some(h) = c.rx_cur else { continue };
                    let pos = c.rx_offset as usize;
                    c.rx_offset += taken.len() as u64;
                    if h.opcode == opcode::BINARY
                        && self.opts.mode == Mode::Throughput
                        && self.payload.get(pos..pos + taken.len()) != Some(taken)
                    {
                        c.errored = true;
                        self.error("echo:corrupt payload".into());
                        return self.kill(slot, Some(generation));
                    }
                    h
                }
            };
            if step.end {
                self.frame_done(slot, generation, h.opcode, h.fin);
            }
        }
    }

    /// The 101 arrived and checked out.
    pub(super) fn connected(&mut self, slot: u32, generation: u32) {
        let now = self.now_us;
        let open_interval = self.open_interval_us();
        self.established += 1;
        self.shared.established.fetch_add(1, Ordering::Relaxed);
        let c = self.r.slots.get_mut(slot, generation).expect("live");
        let started = c.started_us;
        c.phase = Phase::Open;
        if let Some(info) = c.sock.tls_info() {
            if info.resumed {
                self.tls_resumed += 1;
            } else {
                self.tls_full += 1;
            }
        }
        match self.opts.mode {
            Mode::Connect if !self.opts.close_frame => {
                let _ = self.hist.record(now.saturating_sub(started).max(1));
                self.kill(slot, Some(generation));
            }
            Mode::Connect => {
                let _ = self.hist.record(now.saturating_sub(started).max(1));
                c.phase = Phase::Closing;
                c.started_us = now;
                let len = self.r.ring.heap.len(self.close) as u32;
                self.send_heap(slot, generation, self.close, len);
            }
            Mode::Idle => {
                let interval = self.opts.interval.as_micros().max(1000) as u64;
                c.next_us = now + (u64::from(slot) * 7919 + generation as u64 * 104729) % interval;
            }
            Mode::Throughput if self.plan.rate > 0.0 => {
                let interval = open_interval;
                c.next_us = now + (u64::from(slot) * 7919) % interval;
                self.sched
                    .push(std::cmp::Reverse((c.next_us, slot, generation)));
            }
            Mode::Throughput => {
                c.sent_at.push_back(now);
                self.send_message(slot, generation);
            }
        }
    }

    pub(super) fn frame_done(&mut self, slot: u32, generation: u32, op: u8, fin: bool) {
        let now = self.now_us;
        let phase = self.phase();
        let c = self.r.slots.get_mut(slot, generation).expect("live");
        match op {
            opcode::BINARY | opcode::TEXT | opcode::CONTINUATION if fin => {
                let Some(sent) = c.sent_at.pop_front() else {
                    return; // a message we did not ask for (e.g. a server greeting)
                };
                self.shared.messages.fetch_add(1, Ordering::Relaxed);
                // Throughput: the measured window only. Idle: heartbeat round trips while all
                // are held (not while the others are still opening).
                let record = match self.opts.mode {
                    Mode::Throughput | Mode::Idle => phase == MEASURE,
                    Mode::Connect => true,
                };
                if record {
                    let _ = self.hist.record(now.saturating_sub(sent).max(1));
                    self.messages += 1;
                    self.bytes += self.payload.len() as u64;
                }
                if self.opts.mode == Mode::Idle {
                    self.hb_echoed += 1;
                }
                if self.opts.mode == Mode::Throughput && self.plan.rate <= 0.0 && phase != STOP {
                    c.sent_at.push_back(now);
                    self.send_message(slot, generation);
                }
            }
            opcode::CLOSE => {
                if c.phase == Phase::Closing {
                    self.closed_clean += 1;
                } else {
                    c.errored = true;
                    self.error("closed-by-server".into());
                }
                self.kill(slot, Some(generation));
            }
            _ => {}
        }
    }
}
