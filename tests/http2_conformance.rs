//! The HTTP/2 frame layer against RFC 9113 and against a reference implementation: each case
//! of `tests/h2/conform.py` (invalid frames in every stream state, stream id edge cases) sent
//! to ringway and to nghttpd (nghttp2's server), their answers compared.

mod common;

use std::time::Duration;

use common::h2::*;
use common::*;

/// RFC 9113's answer to each case of tests/h2/conform.py, as ringway gives it. Where the RFC
/// lets a server choose (a stream error may be treated as a connection error, §5.4.1; a
/// frame on a closed stream may be either, §5.1), the choice is ringway's and the reason is
/// in `DIFFERENT_FROM_NGHTTPD`.
const CONFORMANCE: [(&str, &str); 52] = [
    ("data_on_idle_stream", "goaway:PROTOCOL_ERROR"),
    ("rst_on_idle_stream", "goaway:PROTOCOL_ERROR"),
    ("window_update_on_idle_stream", "goaway:PROTOCOL_ERROR"),
    ("continuation_without_headers", "goaway:PROTOCOL_ERROR"),
    ("headers_on_even_stream", "goaway:PROTOCOL_ERROR"),
    ("headers_on_a_lower_stream", "goaway:PROTOCOL_ERROR"),
    ("the_highest_stream_id", "status:200"),
    ("a_stream_after_the_highest_id", "goaway:PROTOCOL_ERROR"),
    ("priority_on_idle_stream_then_request", "status:200"),
    ("second_headers_without_end_stream", "rst:PROTOCOL_ERROR"),
    ("data_after_end_stream", "rst:STREAM_CLOSED"),
    ("content_length_larger_than_data", "rst:PROTOCOL_ERROR"),
    ("content_length_smaller_than_data", "rst:PROTOCOL_ERROR"),
    ("window_update_zero_on_stream", "rst:PROTOCOL_ERROR"),
    ("window_overflow_on_stream", "rst:FLOW_CONTROL_ERROR"),
    ("priority_depending_on_itself", "rst:PROTOCOL_ERROR"),
    ("headers_depending_on_itself", "rst:PROTOCOL_ERROR"),
    ("uppercase_field_name", "rst:PROTOCOL_ERROR"),
    ("connection_specific_field", "rst:PROTOCOL_ERROR"),
    ("te_other_than_trailers", "rst:PROTOCOL_ERROR"),
    ("te_trailers", "status:200"),
    ("missing_path", "rst:PROTOCOL_ERROR"),
    ("empty_path", "rst:PROTOCOL_ERROR"),
    ("pseudo_after_regular", "rst:PROTOCOL_ERROR"),
    ("duplicate_method", "rst:PROTOCOL_ERROR"),
    ("unknown_pseudo_field", "rst:PROTOCOL_ERROR"),
    ("response_pseudo_in_request", "rst:PROTOCOL_ERROR"),
    (
        "headers_interrupted_before_continuation",
        "goaway:PROTOCOL_ERROR",
    ),
    ("hpack_index_out_of_range", "goaway:COMPRESSION_ERROR"),
    (
        "hpack_table_size_update_after_a_field",
        "goaway:COMPRESSION_ERROR",
    ),
    ("settings_ack_with_payload", "goaway:FRAME_SIZE_ERROR"),
    (
        "settings_length_not_a_multiple_of_6",
        "goaway:FRAME_SIZE_ERROR",
    ),
    ("settings_on_a_stream", "goaway:PROTOCOL_ERROR"),
    ("settings_enable_push_2", "goaway:PROTOCOL_ERROR"),
    (
        "settings_initial_window_too_large",
        "goaway:FLOW_CONTROL_ERROR",
    ),
    ("settings_max_frame_size_too_small", "goaway:PROTOCOL_ERROR"),
    ("settings_unknown_identifier", "status:200"),
    ("ping_of_7_bytes", "goaway:FRAME_SIZE_ERROR"),
    ("ping_on_a_stream", "goaway:PROTOCOL_ERROR"),
    ("goaway_on_a_stream", "goaway:PROTOCOL_ERROR"),
    ("push_promise_from_a_client", "goaway:PROTOCOL_ERROR"),
    ("rst_stream_of_3_bytes", "goaway:FRAME_SIZE_ERROR"),
    ("window_update_of_3_bytes", "goaway:FRAME_SIZE_ERROR"),
    ("window_update_zero_on_connection", "goaway:PROTOCOL_ERROR"),
    ("window_overflow_on_connection", "goaway:FLOW_CONTROL_ERROR"),
    ("data_on_stream_0", "goaway:PROTOCOL_ERROR"),
    ("headers_on_stream_0", "goaway:PROTOCOL_ERROR"),
    (
        "frame_larger_than_max_frame_size",
        "goaway:FRAME_SIZE_ERROR",
    ),
    ("padding_longer_than_the_payload", "goaway:PROTOCOL_ERROR"),
    ("unknown_frame_type_then_request", "status:200"),
    (
        "unknown_frame_in_the_middle_of_a_header_block",
        "goaway:PROTOCOL_ERROR",
    ),
    ("bad_preface", "closed"),
];

/// Cases where nghttpd (nghttp2 1.52) answers otherwise: (case, nghttpd's answer, why
/// ringway's stands). Both answers conform where RFC 9113 lets a server choose.
const DIFFERENT_FROM_NGHTTPD: [(&str, &str, &str); 6] = [
    (
        "data_after_end_stream",
        "goaway:STREAM_CLOSED",
        "ringway's stream is half-closed (remote) while its upstream answers: §5.1 asks for a \
         stream error; nghttpd answered from its disk at once, and on a closed stream §5.1 \
         allows a connection error",
    ),
    (
        "headers_depending_on_itself",
        "goaway:PROTOCOL_ERROR",
        "§5.3.1: a stream error; nghttpd ends the connection (§5.4.1 allows it)",
    ),
    (
        "priority_depending_on_itself",
        "goaway:PROTOCOL_ERROR",
        "§5.3.1: a stream error; nghttpd ends the connection (§5.4.1 allows it)",
    ),
    (
        "window_update_zero_on_stream",
        "goaway:PROTOCOL_ERROR",
        "§6.9: a stream error; nghttpd ends the connection (§5.4.1 allows it)",
    ),
    (
        "headers_on_a_lower_stream",
        "nothing",
        "§5.1.1: an unexpected stream id MUST be a connection error PROTOCOL_ERROR; nghttpd \
         ignores the HEADERS",
    ),
    (
        "a_stream_after_the_highest_id",
        "nothing",
        "the same: stream 1 after stream 2^31-1 is an id the client skipped",
    ),
];

#[test]
fn frame_layer_answers_as_rfc_9113_asks_and_as_nghttpd_does() {
    if !uring_ok() || !python_h2() {
        return;
    }
    let st = stack("h2-conform", "", H2_SERVER, "");
    let ours = run_py(
        "conform.py",
        &["127.0.0.1".into(), st.listen.port().to_string()],
    );
    // nghttpd serves the same path from a directory.
    let dir = scratch("h2-conform-nghttpd");
    std::fs::write(dir.join("headers"), "hello\n").unwrap();
    let port = free_addr().port().to_string();
    let theirs = tool(
        "/usr/sbin/nghttpd",
        &["--no-tls", "-d", dir.to_str().unwrap(), &port],
        &dir,
        "nghttpd",
    )
    .map(|_p| {
        std::thread::sleep(Duration::from_millis(500));
        run_py("conform.py", &["127.0.0.1".into(), port.clone()])
    });
    for (case, want) in CONFORMANCE {
        assert_eq!(ours[case], want, "ringway, {case}: {ours}");
    }
    assert_eq!(ours.as_object().unwrap().len(), CONFORMANCE.len(), "{ours}");
    // The differential: nghttpd answers the same, but where the list says otherwise.
    let Some(theirs) = theirs else { return };
    for (case, want) in CONFORMANCE {
        let want = DIFFERENT_FROM_NGHTTPD
            .iter()
            .find(|d| d.0 == case)
            .map_or(want, |d| d.1);
        assert_eq!(theirs[case], want, "nghttpd, {case}: {theirs}");
    }
}
