//! The directives that may stand at any level (main, http, server, location) and are inherited
//! inward: timeouts, proxy headers, limits, next_upstream, upstream TLS, certificates, client
//! header limits, keep-alive and the real client address.

use super::*;

impl Translator {
    /// Directives valid at http, server and location level.
    pub(super) fn common(&mut self, d: &Directive, inh: &mut Inherit) -> Result<(), ParseError> {
        if self.tls_common(d, inh)? || self.client_common(d, inh)? {
            return Ok(());
        }
        let at = d.at.clone();
        match d.name.as_str() {
            "proxy_connect_timeout" => inh.connect = Some((self.timeout(d)?, at)),
            "proxy_read_timeout" => inh.read = Some((self.timeout(d)?, at)),
            "proxy_send_timeout" => inh.send = Some((self.timeout(d)?, at)),
            "client_body_timeout" => inh.body = Some((self.timeout(d)?, at)),
            "send_timeout" => {
                self.time(d)?;
                self.warn(
                    d,
                    "ringway's send_timeout (set from proxy_send_timeout) bounds a send making no progress in either direction",
                );
            }
            "proxy_set_header" => {
                self.args(d, 2..=2)?;
                list_push(
                    &mut inh.headers,
                    &mut inh.here,
                    "proxy_set_header",
                    d.clone(),
                );
            }
            "limit_conn" => {
                let a = self.args(d, 2..=2)?;
                self.int(d, &a[1])?;
                list_push(&mut inh.limit_conn, &mut inh.here, "limit_conn", d.clone());
            }
            "limit_req" => {
                self.args(d, 1..=4)?;
                list_push(&mut inh.limit_req, &mut inh.here, "limit_req", d.clone());
            }
            "limit_conn_status" => {
                inh.limit_conn_status = Some((self.one_int(d)?, at));
            }
            "limit_req_status" => {
                inh.limit_req_status = Some((self.one_int(d)?, at));
            }
            "proxy_next_upstream" => {
                self.args(d, 1..=12)?;
                inh.next_upstream = Some(d.clone());
            }
            "proxy_next_upstream_tries" => {
                inh.next_tries = Some((self.one_int(d)?, at));
            }
            "proxy_next_upstream_timeout" => inh.next_timeout = Some((self.timeout(d)?, at)),
            "proxy_bind" => {
                self.args(d, 1..=2)?;
                inh.bind = Some(d.clone());
            }
            "proxy_http_version" => {
                let a = self.args(d, 1..=1)?;
                if a[0] != "1.1" {
                    self.warn(
                        d,
                        "ringway always speaks HTTP/1.1 to upstreams (WebSockets need it)",
                    );
                } else {
                    self.recognised.push(format!(
                        "{}: proxy_http_version 1.1: what ringway speaks to upstreams",
                        d.at
                    ));
                }
            }
            "proxy_buffering" | "proxy_request_buffering"
                if d.args.first().map(String::as_str) == Some("off") =>
            {
                self.warn(d, "what ringway always does (it never buffers, in either direction): nothing to write");
            }
            "auth_request" => {
                self.args(d, 1..=1)?;
                inh.auth_request = Some(d.clone());
            }
            "auth_request_set" => {
                self.args(d, 2..=2)?;
                list_push(
                    &mut inh.auth_set,
                    &mut inh.here,
                    "auth_request_set",
                    d.clone(),
                );
            }
            "proxy_cache" if d.args.first().map(String::as_str) == Some("off") => {
                self.warn(d, "ringway caches nothing: nothing to write");
            }
            _ => self.other(d),
        }
        Ok(())
    }

    /// The TLS directives of any level (certificates, protocols, the proxy_ssl_* of upstream
    /// TLS): whether `d` was one.
    fn tls_common(&mut self, d: &Directive, inh: &mut Inherit) -> Result<bool, ParseError> {
        let at = d.at.clone();
        match d.name.as_str() {
            "proxy_ssl_verify" => inh.ssl_verify = Some(self.on_off(d)?),
            "proxy_ssl_trusted_certificate" => {
                let a = self.args(d, 1..=1)?;
                inh.ssl_ca = Some(self.path(&a[0]));
            }
            "proxy_ssl_name" => {
                let a = self.args(d, 1..=1)?;
                inh.ssl_name = Some(a[0].clone());
            }
            "proxy_ssl_server_name" => inh.ssl_server_name = Some(self.on_off(d)?),
            "ssl_certificate" | "ssl_certificate_key" => {
                let a = self.args(d, 1..=1)?;
                if a[0].contains('$') || a[0].starts_with("data:") {
                    self.warn(d, "certificates named by variables or given inline are not supported: write the file's path");
                } else {
                    let p = self.path(&a[0]);
                    if d.name == "ssl_certificate" {
                        list_push(&mut inh.certs, &mut inh.here, "ssl_certificate", (p, at));
                    } else {
                        list_push(&mut inh.keys, &mut inh.here, "ssl_certificate_key", (p, at));
                    }
                }
            }
            "ssl_protocols" => {
                self.args(d, 1..=6)?;
                inh.protocols = Some(d.clone());
            }
            "ssl" => {
                self.warn(d, "`ssl on` is written as `listen … ssl` in ringway's terms: this server's listen addresses are taken as TLS");
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// The client-side directives of any level (header limits, keep-alive, real IP): whether
    /// `d` was one.
    fn client_common(&mut self, d: &Directive, inh: &mut Inherit) -> Result<bool, ParseError> {
        let at = d.at.clone();
        match d.name.as_str() {
            "client_header_timeout" => inh.header_timeout = Some((self.timeout(d)?, at)),
            "large_client_header_buffers" => {
                let a = self.args(d, 2..=2)?;
                let n = self.int(d, &a[0])? as u64;
                let sz = ringway_proxy::config::parse_size(&a[1]).map_err(|e| err(&d.at, e))?;
                inh.header_buffers = Some((n, sz, at));
            }
            "keepalive_timeout" => {
                let a = self.args(d, 1..=2)?;
                let ms =
                    nginx_time(&a[0]).map_err(|e| err(&d.at, format!("keepalive_timeout: {e}")))?;
                let ms = self.at_most_max(d, ms);
                if a.len() == 2 {
                    self.warn(
                        d,
                        "the second value (a Keep-Alive: timeout= header) is not sent",
                    );
                }
                inh.keepalive_timeout = Some((ms, at));
            }
            "keepalive_requests" => {
                inh.keepalive_requests = Some((self.one_int(d)?, at));
            }
            "real_ip_header" => {
                self.args(d, 1..=1)?;
                inh.real_ip_header = Some(d.clone());
            }
            "set_real_ip_from" => {
                self.args(d, 1..=1)?;
                list_push(
                    &mut inh.set_real_ip_from,
                    &mut inh.here,
                    "set_real_ip_from",
                    d.clone(),
                );
            }
            _ => return Ok(false),
        }
        Ok(true)
    }
}

/// A list directive: the first one at a level replaces what was inherited, the next add to it.
pub(super) fn list_push<T>(
    list: &mut Option<Vec<T>>,
    here: &mut Vec<&'static str>,
    key: &'static str,
    v: T,
) {
    if here.contains(&key) {
        list.get_or_insert_with(Vec::new).push(v);
    } else {
        here.push(key);
        *list = Some(vec![v]);
    }
}
