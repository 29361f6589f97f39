//! AFL++ harness (`scripts/fuzz-afl.sh`): the first input byte picks the target, the rest is
//! the input; the checks are `ringway_proxy::fuzzing`'s, the same as `tests/fuzz.rs` runs.

use ringway_proxy::fuzzing;

fn main() {
    afl::fuzz!(|data: &[u8]| {
        let Some((&which, input)) = data.split_first() else {
            return;
        };
        // Reads cut at a third and two thirds (the mutation fuzzer tries random cuts).
        let cuts = [input.len() / 3, input.len() * 2 / 3];
        match which % 6 {
            0 => fuzzing::request_head(input),
            1 => fuzzing::response_head(input),
            2 => fuzzing::chunked(input, &cuts),
            3 => fuzzing::frames(input, &cuts),
            4 => fuzzing::tls_records(input),
            _ => fuzzing::config(input),
        }
    });
}
