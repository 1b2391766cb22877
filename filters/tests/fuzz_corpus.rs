#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test
//! CI's share of the fuzzing: every fuzz target's body (`weir_filters::fuzzing`)
//! over the committed corpus (`tests/fuzz/corpus/TARGET/`), and over random
//! mutations of it (byte flips, cuts, splices), a bounded number per target. The
//! long coverage-guided runs are `.ci/fuzz`'s.

use rand::{Rng, SeedableRng};
use std::path::PathBuf;
use weir_filters::fuzzing::TARGETS;

/// Mutated inputs tried per target on each run.
const MUTATIONS: usize = 3_000;

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fuzz/corpus")
        .join(target);
    let mut inputs: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| std::fs::read(e.unwrap().path()).unwrap())
        .collect();
    inputs.sort();
    assert!(!inputs.is_empty(), "no corpus for {target}");
    inputs
}

fn mutate(rng: &mut impl Rng, seeds: &[Vec<u8>]) -> Vec<u8> {
    let mut input = seeds[rng.gen_range(0..seeds.len())].clone();
    for _ in 0..rng.gen_range(1..6) {
        let len = input.len();
        match rng.gen_range(0..5) {
            0 if len > 0 => {
                let i = rng.gen_range(0..len);
                input[i] = rng.gen();
            }
            1 if len > 0 => input.truncate(rng.gen_range(0..len)),
            2 => {
                let other = &seeds[rng.gen_range(0..seeds.len())];
                let at = rng.gen_range(0..=len);
                let from = rng.gen_range(0..=other.len());
                input.splice(at..at, other[from..].iter().copied());
            }
            3 if len > 1 => {
                let i = rng.gen_range(0..len);
                input.remove(i);
            }
            _ => input.insert(rng.gen_range(0..=len), rng.gen()),
        }
    }
    input
}

#[test]
fn every_target_holds_over_its_corpus_and_mutations_of_it() {
    for (name, target) in TARGETS {
        let seeds = corpus(name);
        for input in &seeds {
            target(input);
        }
        // A fixed seed: a failure here replays the same way.
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);
        for _ in 0..MUTATIONS {
            let input = mutate(&mut rng, &seeds);
            let caught = std::panic::catch_unwind(|| target(&input));
            if caught.is_err() {
                panic!("{name} failed on {:?}", String::from_utf8_lossy(&input));
            }
        }
    }
}
