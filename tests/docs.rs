//! The docs users read must say what the code does: every cell of the matrices in docs/compatibility.md
//! and every row of the process-isolation table in docs/labels.md is checked against the core.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::pedantic)] // test code: a panic is a failed test

use osbuild_controller::core::compat::{compat, process_isolation_builds};
use osbuild_controller::core::version::WindowsVersion;

/// The five-digit numbers in a table cell, e.g. "Windows 11 21H2–23H2 (22000–22631)" → [22000, 22631].
fn builds_in(text: &str) -> Vec<u32> {
    text.split(|c: char| !c.is_ascii_digit())
        .filter(|s| s.len() == 5)
        .filter_map(|s| s.parse().ok())
        .collect()
}

fn table_rows(doc: &str, heading: &str) -> Vec<Vec<String>> {
    let section = doc
        .split(heading)
        .nth(1)
        .unwrap_or_else(|| panic!("no {heading:?} section"));
    section
        .lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .filter(|l| !l.starts_with("|---"))
        .map(|l| {
            l.trim_matches('|')
                .split('|')
                .map(|c| c.trim().to_owned())
                .collect()
        })
        .collect()
}

fn check_matrix(doc: &str, heading: &str) -> usize {
    let rows = table_rows(doc, heading);
    let images: Vec<u32> = rows[0][1..].iter().map(|h| builds_in(h)[0]).collect();
    let mut checked = 0;
    for row in &rows[1..] {
        for host_build in builds_in(&row[0]) {
            for (cell, &image_build) in row[1..].iter().zip(&images) {
                let (process, hyperv) = cell.split_once(" / ").expect("cell is 'process / hyperv'");
                let host = WindowsVersion::new(host_build, Some(1));
                let answer = compat(host, WindowsVersion::new(image_build, Some(1)));
                assert_eq!(
                    hyperv == "✔",
                    answer.hyperv_isolation,
                    "{heading} host {host_build} image {image_build}"
                );
                if process.starts_with("same revision") {
                    assert!(answer.process_isolation);
                    assert!(
                        !compat(host, WindowsVersion::new(image_build, Some(2))).process_isolation
                    );
                } else {
                    assert_eq!(
                        process.starts_with('✔'),
                        answer.process_isolation,
                        "{heading} host {host_build} image {image_build}: {}",
                        answer.reason
                    );
                }
                checked += 1;
            }
        }
    }
    checked
}

#[test]
fn compatibility_md_matches_the_code() {
    let doc = include_str!("../docs/compatibility.md");
    assert_eq!(check_matrix(doc, "## Server hosts"), 30);
    assert_eq!(check_matrix(doc, "## Client hosts"), 12);
}

#[test]
fn labels_md_process_isolation_table_matches_the_code() {
    let doc = include_str!("../docs/labels.md");
    let rows = table_rows(doc, "| host build | process-isolation labels |");
    let mut checked = 0;
    // The heading row itself is consumed by split(); every row left is "host builds | labels".
    for row in rows
        .iter()
        .filter(|r| !builds_in(&r[0]).is_empty() && !r[0].starts_with("14393"))
    {
        let hosts = builds_in(&row[0]);
        let (first, last) = (hosts[0], *hosts.last().unwrap());
        for host in [first, last] {
            let mut expected = builds_in(&row[1]);
            if row[1].contains("its own build") {
                expected.push(host);
            }
            expected.sort_unstable();
            expected.dedup();
            assert_eq!(
                process_isolation_builds(host),
                expected,
                "host {host}: {:?}",
                row
            );
            checked += 1;
        }
    }
    assert!(checked >= 12, "only {checked} rows checked");
}

#[test]
fn readme_configuration_table_matches_the_cli() {
    use clap::CommandFactory;
    let readme = include_str!("../README.md");
    let table = readme
        .split("## Configuration (`osbuild-controller run`)")
        .nth(1)
        .expect("README has a configuration section");
    let cli = osbuild_controller::cli::Cli::command();
    let run = cli.find_subcommand("run").expect("run subcommand");
    let mut checked = 0;
    for arg in run.get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        if matches!(long, "help" | "version") {
            continue;
        }
        let row = table
            .lines()
            .find(|l| l.starts_with(&format!("| `--{long}` |")))
            .unwrap_or_else(|| panic!("README lacks a row for --{long}"));
        let env = arg
            .get_env()
            .expect("every flag has an env var")
            .to_string_lossy();
        assert!(
            row.contains(&format!("`{env}`")),
            "--{long}: README row lacks {env}: {row}"
        );
        for default in arg.get_default_values() {
            let default = default.to_string_lossy();
            assert!(
                row.contains(&format!("`{default}`")),
                "--{long}: README row lacks default {default}: {row}"
            );
        }
        checked += 1;
    }
    let rows = table
        .lines()
        .take_while(|l| !l.starts_with("Invalid"))
        .filter(|l| l.starts_with("| `--"))
        .count();
    assert_eq!(rows, checked, "README lists flags that `run` does not have");
}
