//! The documentation checked against the binary and the file tree, so it cannot drift:
//!
//! - docs/configuration.md has a row for every flag `streamtract run --help` prints (and no
//!   row for a flag it does not print), with the default and environment variable `--help`
//!   gives, and every TOML key in its table is one the config file accepts (and the other way
//!   round), found by handing `streamtract run --config` small files: no broker needed;
//! - README.md stays under 250 lines and names the two commands CI runs;
//! - every relative link in README.md and docs/*.md points at a file that exists, and at a
//!   heading that exists when it names one.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Runs the binary with `args` and returns its output; fails the test if it has not exited
/// within a minute (none of these invocations may reach for a broker).
fn streamtract(args: &[&str]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_streamtract"))
        .args(args)
        .current_dir(repo())
        .env_remove("STREAMTRACT_LOG_FORMAT")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start streamtract");
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().expect("wait for streamtract").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("streamtract {args:?} did not exit within a minute");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    child.wait_with_output().expect("read streamtract's output")
}

/// One long flag of a `--help` text, with what its block says.
#[derive(Debug)]
struct HelpFlag {
    name: String,
    default: Option<String>,
    env: Option<String>,
}

/// The long flags of `streamtract SUBCOMMAND --help`, without `--help` itself.
fn help_flags(subcommand: &str) -> Vec<HelpFlag> {
    let out = streamtract(&[subcommand, "--help"]);
    assert!(out.status.success(), "{subcommand} --help: {out:?}");
    let help = String::from_utf8(out.stdout).unwrap();
    let mut blocks: Vec<(String, String)> = Vec::new();
    for line in help.lines() {
        let trimmed = line.trim_start();
        let flag = trimmed
            .strip_prefix("--")
            .or_else(|| {
                // `-c, --config <FILE>`
                let rest = trimmed.strip_prefix('-')?;
                rest.split_once(", --").map(|(_, long)| long)
            })
            // flag lines are indented by 2 or 6 spaces, their descriptions by 10
            .filter(|_| line.len() - trimmed.len() <= 6);
        match flag {
            Some(f) => {
                let name = f.split([' ', '<', '[']).next().unwrap_or("").to_string();
                blocks.push((name, String::new()));
            }
            None => {
                if let Some((_, text)) = blocks.last_mut() {
                    text.push(' ');
                    text.push_str(trimmed);
                }
            }
        }
    }
    let bracketed = |text: &str, tag: &str| -> Option<String> {
        let start = text.find(tag)? + tag.len();
        let end = text[start..].find(']')? + start;
        Some(text[start..end].to_string())
    };
    blocks
        .into_iter()
        .filter(|(name, _)| !name.is_empty() && name != "help")
        .map(|(name, text)| HelpFlag {
            default: bracketed(&text, "[default: "),
            env: bracketed(&text, "[env: ").map(|e| e.split('=').next().unwrap().to_string()),
            name,
        })
        .collect()
}

/// A row of the flag table in docs/configuration.md.
#[derive(Debug)]
struct DocRow {
    flags: Vec<String>,
    key: Option<String>,
    env: Option<String>,
    default: String,
}

/// The text between backticks in `cell`, each span on its own.
fn code_spans(cell: &str) -> Vec<String> {
    cell.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

/// The rows of the table under "## Every flag" in docs/configuration.md: | flag | TOML key |
/// environment variable | default | meaning |.
fn configuration_rows() -> Vec<DocRow> {
    let text = read(&repo().join("docs/configuration.md"));
    let section = text
        .split("\n## ")
        .find(|s| s.starts_with("Every flag"))
        .expect("docs/configuration.md has a section \"## Every flag\"");
    let rows: Vec<DocRow> = section
        .lines()
        .filter(|l| l.starts_with("| `-"))
        .map(|line| {
            let cells: Vec<&str> = line
                .trim_start_matches('|')
                .splitn(5, '|')
                .map(str::trim)
                .collect();
            assert_eq!(cells.len(), 5, "not a five-column row: {line}");
            let flags = code_spans(cells[0])
                .into_iter()
                .filter_map(|f| f.strip_prefix("--").map(str::to_string))
                .collect();
            DocRow {
                flags,
                key: code_spans(cells[1]).into_iter().next(),
                env: code_spans(cells[2]).into_iter().next(),
                default: cells[3].replace('`', ""),
            }
        })
        .collect();
    assert!(rows.len() > 30, "too few rows parsed: {rows:?}");
    rows
}

/// docs/configuration.md has one row per flag of `streamtract run --help`, no row for a flag
/// that does not exist, and the defaults and environment variables `--help` prints.
#[test]
fn the_configuration_reference_names_every_flag_of_run_help() {
    let help = help_flags("run");
    assert!(help.len() > 40, "too few flags parsed: {help:?}");
    let rows = configuration_rows();
    let row_of = |flag: &str| rows.iter().find(|r| r.flags.iter().any(|f| f == flag));

    let missing: Vec<&str> = help
        .iter()
        .map(|f| f.name.as_str())
        .filter(|f| row_of(f).is_none())
        .collect();
    assert!(
        missing.is_empty(),
        "docs/configuration.md has no row for: {missing:?} (read `streamtract run --help` and add them)"
    );

    let known: BTreeSet<&str> = help.iter().map(|f| f.name.as_str()).collect();
    let unknown: Vec<&String> = rows
        .iter()
        .flat_map(|r| &r.flags)
        .filter(|f| !known.contains(f.as_str()))
        .collect();
    assert!(
        unknown.is_empty(),
        "docs/configuration.md documents flags `run --help` does not print: {unknown:?}"
    );

    let mut wrong = Vec::new();
    for flag in &help {
        let row = row_of(&flag.name).unwrap();
        if let Some(default) = &flag.default {
            if !row.default.contains(default.as_str()) {
                wrong.push(format!(
                    "--{}: default `{default}` in --help, `{}` in the docs",
                    flag.name, row.default
                ));
            }
        }
        if flag.env != row.env {
            wrong.push(format!(
                "--{}: environment variable {:?} in --help, {:?} in the docs",
                flag.name, flag.env, row.env
            ));
        }
        if let Some(key) = &row.key {
            if *key != flag.name.replace('-', "_") {
                wrong.push(format!(
                    "--{}: TOML key `{key}` is not the flag's name with `_` for `-`",
                    flag.name
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "docs/configuration.md: {wrong:#?}");
}

/// What `streamtract run --config FILE` says about a file holding just `text`.
fn config_file_verdict(dir: &Path, name: &str, text: &str) -> (Option<i32>, String) {
    let file = dir.join(format!("{name}.toml"));
    std::fs::write(&file, text).unwrap();
    let out = streamtract(&["run", "--config", file.to_str().unwrap()]);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Every TOML key in docs/configuration.md's table is accepted by the config file, and every
/// key the config file accepts is in the table. Checked with the binary itself: a file holding
/// one documented key with a value of the wrong type (an empty table) must fail on the value,
/// not on an unknown key; a file with an unknown key fails naming every key it accepts.
#[test]
fn every_documented_toml_key_is_accepted_by_the_config_file() {
    let rows = configuration_rows();
    let documented: BTreeSet<String> = rows.iter().filter_map(|r| r.key.clone()).collect();
    assert!(documented.len() > 30, "{documented:?}");
    let dir = std::env::temp_dir().join(format!("streamtract-docs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();

    // The probe tells unknown keys apart, and the error lists the accepted ones.
    let (code, stderr) = config_file_verdict(&dir, "unknown", "surely_not_a_key = 1\n");
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("unknown field"), "{stderr}");
    let accepted = stderr
        .split_once("expected one of")
        .unwrap_or_else(|| panic!("the error does not list the accepted keys: {stderr}"))
        .1;
    let accepted: BTreeSet<String> = code_spans(accepted).into_iter().collect();
    assert!(accepted.len() > 30, "{accepted:?} from {stderr}");

    let mut rejected = BTreeMap::new();
    for key in &documented {
        let (code, stderr) = config_file_verdict(&dir, key, &format!("{key} = {{}}\n"));
        if code != Some(2) || stderr.contains("unknown field") {
            rejected.insert(key.clone(), stderr);
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        rejected.is_empty(),
        "docs/configuration.md lists TOML keys the config file rejects: {rejected:#?}"
    );

    let undocumented: Vec<&String> = accepted.difference(&documented).collect();
    assert!(
        undocumented.is_empty(),
        "the config file accepts keys docs/configuration.md does not list: {undocumented:?}"
    );
}

/// README.md stays a page a newcomer reads in ten minutes, and keeps the two commands (CI runs
/// the test command it names).
#[test]
fn the_readme_is_short_and_names_the_two_commands() {
    let readme = read(&repo().join("README.md"));
    let lines = readme.lines().count();
    assert!(lines < 250, "README.md has {lines} lines; the limit is 249");
    for script in ["scripts/demo.sh", "scripts/test.sh"] {
        assert!(
            readme.lines().any(|l| l.starts_with(script)),
            "README.md has no command line starting with {script}"
        );
        assert!(repo().join(script).is_file(), "{script} does not exist");
    }
    let ci = read(&repo().join(".ci/run"));
    assert!(
        ci.lines().any(|l| l.trim() == "scripts/test.sh"),
        ".ci/run no longer runs README's test command scripts/test.sh"
    );
}

/// GitHub's anchor for a heading: lower case, punctuation dropped, spaces as `-`.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// The lines of a Markdown file outside fenced code blocks.
fn prose_lines(text: &str) -> Vec<&str> {
    let mut fenced = false;
    text.lines()
        .filter(|l| {
            if l.trim_start().starts_with("```") {
                fenced = !fenced;
                return false;
            }
            !fenced
        })
        .collect()
}

/// The anchors of a Markdown file's headings (with GitHub's `-1`, `-2` for repeats).
fn anchors(text: &str) -> BTreeSet<String> {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut out = BTreeSet::new();
    for line in prose_lines(text) {
        let Some(heading) = line.strip_prefix('#') else {
            continue;
        };
        let s = slug(heading.trim_start_matches('#'));
        let n = seen.entry(s.clone()).or_insert(0);
        out.insert(if *n == 0 {
            s.clone()
        } else {
            format!("{s}-{n}")
        });
        *n += 1;
    }
    out
}

/// The targets of the inline links `[text](target)` and reference definitions `[x]: target`
/// of a Markdown file, outside code blocks and code spans.
fn link_targets(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in prose_lines(text) {
        let prose: String = line.split('`').step_by(2).collect::<Vec<_>>().join(" ");
        let mut rest = prose.as_str();
        while let Some(i) = rest.find("](") {
            rest = &rest[i + 2..];
            if let Some(end) = rest.find(')') {
                let target = rest[..end].split_whitespace().next().unwrap_or("");
                out.push(target.trim_matches(['<', '>']).to_string());
                rest = &rest[end..];
            }
        }
        let trimmed = prose.trim_start();
        if trimmed.starts_with('[') {
            if let Some((_, target)) = trimmed.split_once("]: ") {
                out.push(target.split_whitespace().next().unwrap_or("").to_string());
            }
        }
    }
    out
}

/// Every relative link in README.md and docs/*.md points at a file that exists, and at one of
/// its headings when it names one.
#[test]
fn every_relative_link_in_the_docs_resolves() {
    let root = repo();
    let mut files = vec![root.join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    assert!(docs.len() >= 4, "{docs:?}");
    files.extend(docs);

    let mut checked = 0;
    let mut broken = Vec::new();
    for file in &files {
        let text = read(file);
        let shown = file.strip_prefix(&root).unwrap().display().to_string();
        for target in link_targets(&text) {
            if target.is_empty() || target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            checked += 1;
            let (path, anchor) = match target.split_once('#') {
                Some((p, a)) => (p, Some(a)),
                None => (target.as_str(), None),
            };
            let resolved = if path.is_empty() {
                file.clone()
            } else {
                file.parent().unwrap().join(path)
            };
            if !resolved.exists() {
                broken.push(format!("{shown}: {target}: no such file"));
                continue;
            }
            if let Some(anchor) = anchor {
                let is_markdown = resolved.extension().is_some_and(|e| e == "md");
                if is_markdown && !anchors(&read(&resolved)).contains(anchor) {
                    broken.push(format!("{shown}: {target}: no such heading"));
                }
            }
        }
    }
    assert!(checked > 20, "too few links found ({checked})");
    assert!(broken.is_empty(), "broken links: {broken:#?}");
}
