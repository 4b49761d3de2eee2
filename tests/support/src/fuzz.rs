//! Inputs for the fuzz tests of every decoder that takes outside input: the committed corpus of
//! real inputs (`tests/corpus/<decoder>/`), mutated the ways that break parsers (bytes flipped,
//! inserted and cut, chunks repeated, two inputs spliced, JSON and YAML tokens dropped in). A
//! run is bounded: `AOP_FUZZ_CASES` inputs per decoder (256 by default); a failure shrinks to a
//! small input and is kept in `proptest-regressions/` beside the test, to commit.

use std::path::{Path, PathBuf};

use proptest::prelude::*;
use proptest::test_runner::Config;

/// Fragments that parsers of JSON and YAML handle on their own paths.
const TOKENS: &[&[u8]] = &[
    b"\"",
    b"\\",
    b"\\u0000",
    b"\\ud800",
    b"{",
    b"}",
    b"[",
    b"]",
    b",",
    b":",
    b"null",
    b"true",
    b"-0",
    b"1e400",
    b"-1.7976931348623157e308",
    b"18446744073709551616",
    b"NaN",
    b"\xff\xfe",
    b"\xe2\x80\xae",
    b"\n- ",
    b": &a\n",
    b"*a",
    b"!!binary ",
    b"---\n",
    b"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[",
    b"{\"a\":{\"a\":{\"a\":{\"a\":{\"a\":{\"a\":",
];

#[derive(Debug, Clone)]
enum Edit {
    Flip(usize, u8),
    Insert(usize, u8),
    Token(usize, usize),
    Remove(usize, usize),
    Repeat(usize, usize, u8),
    Truncate(usize),
    /// Replaces the tail from here with the tail of another input.
    Splice(usize, usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(at, b)| Edit::Flip(at, b)),
        (any::<usize>(), any::<u8>()).prop_map(|(at, b)| Edit::Insert(at, b)),
        (any::<usize>(), 0..TOKENS.len()).prop_map(|(at, t)| Edit::Token(at, t)),
        (any::<usize>(), 1usize..64).prop_map(|(at, n)| Edit::Remove(at, n)),
        (any::<usize>(), 1usize..32, 1u8..16).prop_map(|(at, n, k)| Edit::Repeat(at, n, k)),
        any::<usize>().prop_map(Edit::Truncate),
        (any::<usize>(), any::<usize>()).prop_map(|(at, other)| Edit::Splice(at, other)),
    ]
}

fn apply(mut input: Vec<u8>, edits: &[Edit], corpus: &[Vec<u8>]) -> Vec<u8> {
    for e in edits {
        let at = |i: usize, len: usize| if len == 0 { 0 } else { i % (len + 1) };
        match *e {
            Edit::Flip(i, b) if !input.is_empty() => {
                let i = i % input.len();
                input[i] ^= b | 1;
            }
            Edit::Flip(..) => {}
            Edit::Insert(i, b) => input.insert(at(i, input.len()), b),
            Edit::Token(i, t) => {
                let i = at(i, input.len());
                input.splice(i..i, TOKENS[t].iter().copied());
            }
            Edit::Remove(i, n) => {
                let i = at(i, input.len());
                let end = (i + n).min(input.len());
                input.drain(i..end);
            }
            Edit::Repeat(i, n, k) => {
                let i = at(i, input.len());
                let end = (i + n).min(input.len());
                let chunk = input[i..end].to_vec();
                for _ in 0..k {
                    input.splice(end..end, chunk.iter().copied());
                }
            }
            Edit::Truncate(i) => input.truncate(at(i, input.len())),
            Edit::Splice(i, other) => {
                let other = &corpus[other % corpus.len()];
                let i = at(i, input.len());
                let from = at(i, other.len()).min(other.len());
                input.truncate(i);
                input.extend_from_slice(&other[from..]);
            }
        }
    }
    input
}

/// The corpus of one decoder: every file in `tests/corpus/<name>` of the repository.
///
/// # Panics
/// When the directory is missing or empty: a fuzz test without seeds would test little.
pub fn corpus(name: &str) -> Vec<Vec<u8>> {
    let dir = repository().join("tests/corpus").join(name);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("corpus {}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .collect();
    files.sort();
    let seeds: Vec<Vec<u8>> = files.iter().map(|f| std::fs::read(f).unwrap()).collect();
    assert!(!seeds.is_empty(), "corpus {} is empty", dir.display());
    seeds
}

fn repository() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .and_then(Path::parent)
        .expect("tests/support sits two levels below the repository")
}

/// The corpus as it is and mutated: what a fuzz test feeds its decoder.
pub fn inputs(corpus: Vec<Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
    let seeds = corpus.clone();
    (
        prop::sample::select(corpus),
        prop::collection::vec(edit(), 0..10),
    )
        .prop_map(move |(seed, edits)| apply(seed, &edits, &seeds))
}

/// How many inputs a fuzz test tries: `AOP_FUZZ_CASES`, 256 by default.
pub fn config() -> Config {
    let cases = std::env::var("AOP_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    Config {
        cases,
        ..Config::default()
    }
}
