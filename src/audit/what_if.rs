//! Upgrade planning: `--if-nodes SELECTOR=KERNEL_VERSION` answers "what breaks if the nodes this label
//! selector picks move to that build", e.g. `agentpool=win19=10.0.26100.1` before a node pool moves from
//! Windows Server 2019 to 2025. Pure: parsing and applying, no I/O.
//!
//! The selector is kubectl's label selector syntax (`k=v`, `k==v`, `k!=v`, `k`, `!k`, `k in (a,b)`,
//! `k notin (a,b)`, joined by commas), matched with kube's own `Selector`.

use std::collections::{BTreeMap, BTreeSet};

use kube::core::{Expression, Selector, SelectorExt};

use crate::core::version::{KernelVersion, WindowsVersion, parse_kernel_version};

/// One `--if-nodes` assumption.
#[derive(Debug, Clone, PartialEq)]
pub struct WhatIf {
    pub selector: Selector,
    /// The kernelVersion the selected nodes are assumed to report, as given.
    pub kernel_version: String,
    pub version: WindowsVersion,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WhatIfError {
    #[error(
        "--if-nodes {0:?}: expected SELECTOR=KERNEL_VERSION, e.g. agentpool=win19=10.0.26100.1"
    )]
    Shape(String),
    #[error("--if-nodes {input:?}: bad label selector {selector:?}: {why}")]
    Selector {
        input: String,
        selector: String,
        why: String,
    },
    #[error("--if-nodes {input:?}: {kernel:?} is not a Windows kernelVersion: {why}")]
    Version {
        input: String,
        kernel: String,
        why: String,
    },
}

impl std::str::FromStr for WhatIf {
    type Err = WhatIfError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let (selector_text, kernel) = input
            .rsplit_once('=')
            .filter(|(s, k)| !s.trim().is_empty() && !k.trim().is_empty())
            .ok_or_else(|| WhatIfError::Shape(input.to_owned()))?;
        let selector = parse_selector(selector_text).map_err(|why| WhatIfError::Selector {
            input: input.to_owned(),
            selector: selector_text.to_owned(),
            why,
        })?;
        let kernel = kernel.trim();
        let version = match parse_kernel_version(kernel) {
            Ok(KernelVersion::Windows(parsed)) => parsed.version,
            Ok(_) => {
                return Err(WhatIfError::Version {
                    input: input.to_owned(),
                    kernel: kernel.to_owned(),
                    why: "not a Windows build".to_owned(),
                });
            }
            Err(err) => {
                return Err(WhatIfError::Version {
                    input: input.to_owned(),
                    kernel: kernel.to_owned(),
                    why: err.to_string(),
                });
            }
        };
        Ok(Self {
            selector,
            kernel_version: kernel.to_owned(),
            version,
        })
    }
}

/// The version a node with these labels is assumed to run: the last matching assumption's, else its own.
pub fn assumed_version(
    what_ifs: &[WhatIf],
    labels: &BTreeMap<String, String>,
    current: Option<WindowsVersion>,
) -> Option<WindowsVersion> {
    what_ifs
        .iter()
        .rev()
        .find(|w| w.selector.matches(labels))
        .map(|w| w.version)
        .or(current)
}

/// kubectl's label selector syntax into kube's `Selector`.
pub fn parse_selector(text: &str) -> Result<Selector, String> {
    let mut expressions = Vec::new();
    for part in split_top_level(text)? {
        let part = part.trim();
        if part.is_empty() {
            return Err("empty requirement".to_owned());
        }
        expressions.push(parse_requirement(part)?);
    }
    Ok(expressions.into_iter().collect())
}

fn parse_requirement(part: &str) -> Result<Expression, String> {
    let key = |k: &str| -> Result<String, String> {
        let k = k.trim();
        if k.is_empty() || k.contains(char::is_whitespace) {
            Err(format!("bad key {k:?}"))
        } else {
            Ok(k.to_owned())
        }
    };
    if let Some((k, v)) = part.split_once("!=") {
        return Ok(Expression::NotEqual(key(k)?, v.trim().to_owned()));
    }
    if let Some((k, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
        return Ok(Expression::Equal(key(k)?, v.trim().to_owned()));
    }
    for (word, set_based) in [(" notin ", false), (" in ", true)] {
        if let Some((k, values)) = part.split_once(word) {
            let values = values
                .trim()
                .strip_prefix('(')
                .and_then(|v| v.strip_suffix(')'))
                .ok_or_else(|| format!("{part:?}: values go in parentheses"))?;
            let set: BTreeSet<String> = values.split(',').map(|v| v.trim().to_owned()).collect();
            return Ok(if set_based {
                Expression::In(key(k)?, set)
            } else {
                Expression::NotIn(key(k)?, set)
            });
        }
    }
    match part.strip_prefix('!') {
        Some(k) => Ok(Expression::DoesNotExist(key(k)?)),
        None => Ok(Expression::Exists(key(part)?)),
    }
}

/// Splits on commas outside parentheses.
fn split_top_level(text: &str) -> Result<Vec<&str>, String> {
    let (mut parts, mut depth, mut start) = (Vec::new(), 0_i32, 0);
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
        if depth < 0 {
            return Err("unbalanced parentheses".to_owned());
        }
    }
    if depth != 0 {
        return Err("unbalanced parentheses".to_owned());
    }
    parts.push(&text[start..]);
    Ok(parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn the_node_pool_migration_of_the_issue() {
        let what_if: WhatIf = "agentpool=win19=10.0.26100.1".parse().unwrap();
        assert_eq!(what_if.version, WindowsVersion::new(26100, Some(1)));
        let win19 = labels(&[("agentpool", "win19"), ("kubernetes.io/os", "windows")]);
        let win22 = labels(&[("agentpool", "win22")]);
        let ws2019 = Some(WindowsVersion::new(17763, Some(3887)));
        let ws2022 = Some(WindowsVersion::new(20348, Some(2700)));
        let list = [what_if];
        assert_eq!(
            assumed_version(&list, &win19, ws2019),
            Some(WindowsVersion::new(26100, Some(1)))
        );
        assert_eq!(
            assumed_version(&list, &win22, ws2022),
            ws2022,
            "other pools keep theirs"
        );
        assert_eq!(assumed_version(&[], &win19, ws2019), ws2019);
    }

    #[test]
    fn selectors_in_kubectl_syntax() {
        let s =
            parse_selector("kubernetes.io/os=windows,agentpool in (win19, win22),!spot,env!=dev")
                .unwrap();
        assert!(s.matches(&labels(&[
            ("kubernetes.io/os", "windows"),
            ("agentpool", "win22")
        ])));
        assert!(!s.matches(&labels(&[
            ("kubernetes.io/os", "windows"),
            ("agentpool", "win25")
        ])));
        assert!(!s.matches(&labels(&[
            ("kubernetes.io/os", "windows"),
            ("agentpool", "win19"),
            ("spot", "1")
        ])));
        assert!(
            parse_selector("pool notin (a,b)")
                .unwrap()
                .matches(&labels(&[("pool", "c")]))
        );
        assert!(
            parse_selector("pool")
                .unwrap()
                .matches(&labels(&[("pool", "")]))
        );
        assert!(parse_selector("pool in (a").is_err());
        assert!(parse_selector("a=b,,c").is_err());
    }

    #[test]
    fn bad_input_says_what_is_wrong() {
        let shape = "agentpool".parse::<WhatIf>().unwrap_err();
        assert!(matches!(shape, WhatIfError::Shape(_)));
        let linux = "agentpool=win19=5.15.0-1049-azure"
            .parse::<WhatIf>()
            .unwrap_err();
        assert!(linux.to_string().contains("not a Windows"), "{linux}");
        let garbage = "agentpool=win19=banana".parse::<WhatIf>().unwrap_err();
        assert!(matches!(garbage, WhatIfError::Version { .. }), "{garbage}");
        let selector = "a in (b=10.0.17763.1".parse::<WhatIf>().unwrap_err();
        assert!(
            matches!(selector, WhatIfError::Selector { .. }),
            "{selector}"
        );
    }
}
