//! nginx's `auth_request URI` (with the internal location it names, and `auth_request_set
//! $var $upstream_http_NAME` passed on by `proxy_set_header HEADER $var`) as ringway's
//! `auth_request = { upstream, uri, set }` table. The internal location itself is not
//! imported (clients must not reach it); a location whose auth target cannot be found is left
//! out rather than imported without its authentication.

use super::*;

impl Translator {
    /// Before a server's locations are read: its locations (at any depth) that have a
    /// `proxy_pass`, by path, for the `auth_request`s that name them.
    pub(super) fn auth_targets(&mut self, block: &[Directive]) {
        self.auth_targets.clear();
        fn walk(block: &[Directive], out: &mut HashMap<String, Directive>) {
            for e in block.iter().filter(|e| e.name == "location") {
                let path = e.args.last().cloned().unwrap_or_default();
                let inner = e.block.as_deref().unwrap_or_default();
                if let Some(p) = inner.iter().find(|d| d.name == "proxy_pass") {
                    out.insert(path, p.clone());
                }
                walk(inner, out);
            }
        }
        let mut found = HashMap::new();
        walk(block, &mut found);
        self.auth_targets = found;
    }

    /// A location's `auth_request`, if it has one (not `off`): the table, and the variables
    /// its `auth_request_set` lines fill (their `proxy_set_header` lines are part of it). `Err`
    /// (a warning given) when it cannot be imported: the location is then left out.
    pub(super) fn auth_request(
        &mut self,
        loc: &Directive,
        inh: &Inherit,
        t: &mut Table,
    ) -> Result<Result<(), ()>, ParseError> {
        self.auth_vars.clear();
        let Some(d) = inh.auth_request.clone() else {
            return Ok(Ok(()));
        };
        let a = self.args(&d, 1..=1)?;
        if a[0] == "off" {
            return Ok(Ok(()));
        }
        let uri = a[0].clone();
        let Some(pass) = self.auth_targets.get(&uri).cloned() else {
            self.warn(
                loc,
                format!("auth_request {uri}: no location {uri} with a proxy_pass in this server: left out (it is not imported without its authentication)"),
            );
            return Ok(Err(()));
        };
        // The target the subrequest asks for: proxy_pass's URI part, else the subrequest's.
        let url = pass.args.first().cloned().unwrap_or_default();
        let rest = url.split_once("://").map_or("", |(_, r)| r);
        let target = rest
            .find('/')
            .map_or(uri.clone(), |i| rest[i..].to_string());
        let Some(upstream) = self.proxy_pass(&pass, &target, inh)? else {
            self.warn(
                loc,
                format!("auth_request {uri}: its proxy_pass cannot be imported: left out"),
            );
            return Ok(Err(()));
        };
        // `auth_request_set $var $upstream_http_x_user` + `proxy_set_header X-User $var`.
        let mut from_answer = HashMap::new();
        let mut used = Vec::new();
        for s in inh.auth_set.clone().unwrap_or_default() {
            let a = self.args(&s, 2..=2)?;
            let var = a[0].trim_start_matches('$').to_string();
            match a[1].strip_prefix("$upstream_http_") {
                Some(h) if !h.contains('$') => {
                    from_answer.insert(var, h.replace('_', "-"));
                    used.push(format!("{}: auth_request_set", s.at));
                }
                _ => self.warn(
                    &s,
                    "only $upstream_http_NAME (a header of the answer) can be passed on: not translated",
                ),
            }
        }
        let mut set = Vec::new();
        for h in inh.headers.clone().unwrap_or_default() {
            let var = h.args[1].trim_start_matches('$');
            if let Some(answer) = from_answer.get(var) {
                set.push((format!("{:?}", h.args[0]), V::S(answer.clone())));
                self.auth_vars.push(var.to_string());
                used.push(format!("{}: proxy_set_header {}", h.at, h.args[0]));
            }
        }
        let mut table = vec![
            ("upstream".to_string(), V::S(upstream)),
            ("uri".to_string(), V::S(target)),
        ];
        if !set.is_empty() {
            table.push(("set".to_string(), V::T(set)));
        }
        t.set(
            "auth_request",
            V::T(table),
            format!(
                "{}: auth_request {uri} ({}: proxy_pass{}{})",
                d.at,
                pass.at,
                if used.is_empty() { "" } else { "; " },
                used.join("; ")
            ),
        );
        Ok(Ok(()))
    }
}
