//! What ringway does instead, for the nginx directives that have no key of their own: the
//! text of each warning the importer gives for them.

/// What ringway does instead, for directives with no key of their own.
const NOTES: &[(&[&str], &str)] = &[
    (
        &["proxy_buffering", "proxy_request_buffering"],
        "ringway never buffers: bytes go on as they arrive (what `off` does), in both directions",
    ),
    (
        &[
            "proxy_buffers",
            "proxy_buffer_size",
            "proxy_busy_buffers_size",
            "proxy_max_temp_file_size",
            "proxy_temp_file_write_size",
            "proxy_temp_path",
            "client_body_buffer_size",
            "client_header_buffer_size",
            "client_body_temp_path",
            "output_buffers",
        ],
        "ringway's buffers are runtime.buffer_size x runtime.buffers, shared by all connections; nothing goes to disk",
    ),
    (
        &[
            "proxy_cache",
            "proxy_cache_path",
            "proxy_cache_valid",
            "proxy_cache_key",
            "proxy_cache_bypass",
            "proxy_no_cache",
            "proxy_store",
        ],
        "ringway caches nothing (a cache has no meaning for WebSockets)",
    ),
    (
        &["proxy_http_version"],
        "ringway speaks HTTP/1.1 to upstreams (what WebSockets need)",
    ),
    (
        &["access_log", "log_format", "open_log_file_cache"],
        "ringway writes one access-log line per session to stderr (journald under systemd), with its end= reason; runtime.access_log = false turns it off",
    ),
    (
        &["error_log"],
        "ringway logs to stderr (journald under systemd)",
    ),
    (
        &[
            "sendfile",
            "tcp_nopush",
            "aio",
            "directio",
            "root",
            "alias",
            "index",
            "autoindex",
            "try_files",
            "types",
            "default_type",
            "charset",
            "etag",
            "expires",
            "open_file_cache",
        ],
        "ringway serves no files: only proxied locations are imported",
    ),
    (
        &[
            "gzip",
            "gzip_types",
            "gzip_proxied",
            "gzip_comp_level",
            "gzip_vary",
            "gzip_min_length",
            "gzip_http_version",
            "gzip_buffers",
            "gzip_disable",
        ],
        "ringway does not compress responses (WebSocket compression, permessage-deflate, is the endpoints' and passes through)",
    ),
    (&["tcp_nodelay"], "not a ringway setting"),
    (
        &[
            "server_tokens",
            "server_names_hash_bucket_size",
            "server_names_hash_max_size",
            "types_hash_max_size",
            "variables_hash_max_size",
            "map_hash_bucket_size",
            "proxy_headers_hash_max_size",
            "proxy_headers_hash_bucket_size",
        ],
        "not a ringway setting",
    ),
    (
        &["client_max_body_size"],
        "ringway streams request bodies without a size limit; body_timeout bounds a body that stalls",
    ),
    (
        &[
            "reset_timedout_connection",
            "lingering_close",
            "lingering_time",
            "lingering_timeout",
        ],
        "ringway closes lingeringly (up to 2 s) after an answer of its own, and closes timed-out connections outright",
    ),
    (
        &["resolver", "resolver_timeout"],
        "ringway resolves upstream names with the system resolver when the configuration is loaded (run, check, each reload)",
    ),
    (
        &[
            "ssl_ciphers",
            "ssl_prefer_server_ciphers",
            "ssl_ecdh_curve",
            "ssl_dhparam",
            "ssl_conf_command",
            "ssl_buffer_size",
            "ssl_early_data",
        ],
        "rustls chooses the cipher suites and key exchange (TLS 1.3 suites, ECDHE with AES-GCM / ChaCha20 for TLS 1.2)",
    ),
    (
        &[
            "ssl_session_cache",
            "ssl_session_timeout",
            "ssl_session_tickets",
            "ssl_session_ticket_key",
        ],
        "session resumption is always on: tickets (keys rotated every 6 h) and TLS 1.2 session IDs shared by every worker",
    ),
    (
        &[
            "ssl_stapling",
            "ssl_stapling_verify",
            "ssl_trusted_certificate",
            "ssl_stapling_file",
            "ssl_client_certificate",
            "ssl_verify_client",
            "ssl_verify_depth",
            "ssl_crl",
            "ssl_password_file",
            "ssl_ocsp",
        ],
        "not supported by ringway's TLS (no OCSP stapling, no client certificates)",
    ),
    (
        &[
            "http3",
            "quic_retry",
            "add_header",
            "more_set_headers",
            "proxy_hide_header",
            "proxy_pass_header",
            "proxy_redirect",
            "proxy_intercept_errors",
            "proxy_ignore_headers",
            "proxy_cookie_domain",
            "proxy_cookie_path",
            "sub_filter",
        ],
        "ringway speaks HTTP/1.1 and passes responses unchanged but for hop-by-hop headers",
    ),
    (
        &["http2_recv_buffer_size", "http2_idle_timeout"],
        "ringway's HTTP/2 sizes its own buffers (a 64 KiB window per stream); an idle HTTP/2 connection closes at keepalive_timeout",
    ),
    (
        &["http2", "http2_max_concurrent_streams"],
        "ringway's http2 and http2_max_concurrent_streams are server keys: write them in each server block (or `listen … http2`); here they are left out",
    ),
    (
        &[
            "return",
            "rewrite",
            "if",
            "set",
            "error_page",
            "break",
            "rewrite_log",
            "recursive_error_pages",
            "stub_status",
        ],
        "ringway has no rewriting or answers of its own beyond 400/404/408/414/431/502/503/504 (its status is on [admin] listen: /status, /metrics)",
    ),
    (
        &[
            "allow",
            "deny",
            "auth_basic",
            "auth_basic_user_file",
            "satisfy",
            "limit_except",
            "valid_referers",
            "secure_link",
        ],
        "ringway has no access control: put it in the backend, a firewall, or limit_conn / limit_req",
    ),
    (
        &["limit_rate", "limit_rate_after", "proxy_limit_rate"],
        "ringway does not limit bandwidth",
    ),
    (
        &["limit_conn_log_level", "limit_req_log_level"],
        "refused connections are in the access log with end=limited",
    ),
    (
        &["limit_conn_dry_run", "limit_req_dry_run"],
        "ringway has no dry-run mode for limits: they apply",
    ),
    (
        &["proxy_ignore_client_abort"],
        "a client that goes away takes its upstream connection with it",
    ),
    (
        &["proxy_socket_keepalive", "so_keepalive"],
        "ringway does not set SO_KEEPALIVE; use a location's heartbeat (WebSocket pings) to find dead peers",
    ),
    (
        &[
            "ignore_invalid_headers",
            "underscores_in_headers",
            "merge_slashes",
            "chunked_transfer_encoding",
            "keepalive_disable",
            "send_lowat",
            "postpone_output",
            "msie_padding",
        ],
        "not a ringway setting: headers are checked strictly (RFC 9112) and passed as sent",
    ),
    (
        &["real_ip_recursive"],
        "ringway takes the last address of real_ip_header (nginx's real_ip_recursive off)",
    ),
    (
        &[
            "proxy_ssl_protocols",
            "proxy_ssl_ciphers",
            "proxy_ssl_session_reuse",
            "proxy_ssl_certificate",
            "proxy_ssl_certificate_key",
            "proxy_ssl_verify_depth",
        ],
        "TLS toward upstreams: rustls chooses protocols (1.2, 1.3) and suites, sessions are resumed; no client certificates",
    ),
    (
        &[
            "user",
            "pid",
            "daemon",
            "master_process",
            "worker_cpu_affinity",
            "worker_priority",
            "pcre_jit",
            "env",
            "lock_file",
            "timer_resolution",
            "working_directory",
            "thread_pool",
            "worker_aio_requests",
            "debug_points",
            "google_perftools_profiles",
            "ssl_engine",
        ],
        "ringway runs in the foreground as the user that starts it (the systemd unit sets it), one worker thread per core",
    ),
    (
        &["load_module"],
        "ringway has no dynamic modules: what it does is built in (a module's directives are warned about where they appear)",
    ),
    (
        &[
            "use",
            "multi_accept",
            "accept_mutex",
            "accept_mutex_delay",
            "debug_connection",
        ],
        "ringway's workers accept on their own SO_REUSEPORT sockets through io_uring",
    ),
];

pub(super) fn note(name: &str) -> Option<&'static str> {
    NOTES
        .iter()
        .find(|(names, _)| names.contains(&name))
        .map(|(_, n)| *n)
}
