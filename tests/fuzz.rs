//! Hostile input: the decoders and the parsers of topic specs and start positions
//! get arbitrary bytes and must answer with a value or an error, never a panic. proptest drives
//! a bounded number of cases (the config file's parser has its own in src/cli/config.rs) (PROPTEST_CASES overrides it) so this runs in CI in seconds; the
//! files in tests/corpus/ are replayed every run as a committed corpus of known-nasty inputs.

use std::str::FromStr;

use proptest::prelude::*;
use streamtract::codec::{Decoder, InputFormat};
use streamtract::dataset::TopicSpec;
use streamtract::kafka::{StartPosition, TopicSelection};
use streamtract::model::{Dim, ElementType, Signature, TensorSpec};

fn spec(name: &str, dims: &[usize]) -> TensorSpec {
    let mut shape = vec![Dim::Symbolic("N".into())];
    shape.extend(dims.iter().map(|d| Dim::Fixed(*d)));
    TensorSpec {
        name: name.into(),
        element_type: ElementType::F32,
        shape,
    }
}

fn signatures() -> Vec<Signature> {
    vec![
        Signature {
            inputs: vec![spec("pixels", &[8, 8, 1])],
            outputs: vec![],
        },
        Signature {
            inputs: vec![spec("chemistry", &[9]), spec("color", &[4])],
            outputs: vec![],
        },
    ]
}

fn formats() -> [InputFormat; 4] {
    [
        InputFormat::Csv { delimiter: b',' },
        InputFormat::Csv { delimiter: b';' },
        InputFormat::Json,
        InputFormat::Raw,
    ]
}

/// Decodes with every format and signature; an accepted row must have the right shape and be finite.
fn decode_everywhere(bytes: &[u8]) {
    for sig in signatures() {
        let lens: Vec<usize> = sig.inputs.iter().map(|i| i.row_len().unwrap()).collect();
        for format in formats() {
            let decoder = Decoder::new(format.clone(), &sig, "fuzz").unwrap();
            if let Ok(row) = decoder.decode(bytes) {
                let got: Vec<usize> = row.values.iter().map(Vec::len).collect();
                assert_eq!(got, lens, "{format}: accepted row of the wrong shape");
                assert!(
                    row.values.iter().flatten().all(|v| v.is_finite()),
                    "{format}: non-finite value accepted"
                );
            }
        }
    }
}

fn parse_everywhere(text: &str) {
    let _ = TopicSelection::from_str(text);
    let _ = StartPosition::from_str(text);
    let _ = TopicSpec::from_str(text);
}

#[test]
fn corpus_replays_without_panics() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        decode_everywhere(&bytes);
        parse_everywhere(&String::from_utf8_lossy(&bytes));
        n += 1;
    }
    assert!(n >= 10, "corpus at {} has only {n} files", dir.display());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn decoders_never_panic_on_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        decode_everywhere(&bytes);
    }

    #[test]
    fn decoders_never_panic_on_number_lists(values in proptest::collection::vec(any::<f32>(), 0..80), sep in prop::sample::select(vec![",", ";", " , ", ",,"])) {
        let csv = values.iter().map(|v| v.to_string()).collect::<Vec<_>>().join(sep);
        decode_everywhere(csv.as_bytes());
        let json = format!("[{}]", values.iter().map(|v| if v.is_finite() { v.to_string() } else { "null".into() }).collect::<Vec<_>>().join(","));
        decode_everywhere(json.as_bytes());
        let raw: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        decode_everywhere(&raw);
    }

    #[test]
    fn json_shaped_input_never_panics(text in r#"[\[\]{}",:0-9a-z. eE+-]{0,200}"#) {
        decode_everywhere(text.as_bytes());
    }

    #[test]
    fn parsers_never_panic(text in "\\PC{0,120}") {
        parse_everywhere(&text);
    }

    #[test]
    fn spec_shaped_text_never_panics(text in "[a-z]{0,5}(:[-0-9]{0,6}){0,5}") {
        parse_everywhere(&text);
    }
}
