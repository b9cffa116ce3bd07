//! Finds the line of a key path (`routes[2].upstream`) in the YAML text.
//!
//! serde_yaml reports positions only for the errors it finds itself; the
//! cross-field checks in `compile` run on parsed values, which carry none.
//! This walks the text by indentation, which covers block and flow style as
//! people write gateway.yaml. When a step cannot be followed it answers the
//! deepest line it reached, so the user is still pointed near the problem.

/// One step of a key path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Key(String),
    Index(usize),
}

/// A line of the file as the walk sees it: 1-based number, column where the
/// content starts (1-based), and the content.
#[derive(Clone, Copy)]
struct Line<'a> {
    number: usize,
    column: usize,
    text: &'a str,
}

/// Line and column (1-based) of `path`, or of the deepest step found.
pub fn locate(source: &str, path: &[Step]) -> Option<(usize, usize)> {
    let mut block: Vec<Line<'_>> = source
        .lines()
        .enumerate()
        .filter_map(|(i, raw)| {
            let text = raw.trim_start();
            (!text.is_empty() && !text.starts_with('#')).then(|| Line {
                number: i + 1,
                column: raw.len() - text.len() + 1,
                text,
            })
        })
        .collect();
    let mut found = None;
    for step in path {
        let Some(first) = block.first().copied() else {
            break;
        };
        // A flow collection on one line: point into it and stop descending.
        if first.text.starts_with('{') || first.text.starts_with('[') {
            if let Step::Key(key) = step
                && let Some(offset) = find_flow_key(first.text, key)
            {
                return Some((first.number, first.column + offset));
            }
            return Some((first.number, first.column));
        }
        let next = match step {
            Step::Key(key) => key_block(&block, key),
            Step::Index(index) => item_block(&block, *index),
        };
        let Some((at, inner)) = next else { break };
        found = Some((at.number, at.column));
        block = inner;
    }
    found
}

/// The line holding `key:` at the block's own indentation, and its value.
fn key_block<'a>(block: &[Line<'a>], key: &str) -> Option<(Line<'a>, Vec<Line<'a>>)> {
    let indent = block.first()?.column;
    let position = block
        .iter()
        .position(|l| l.column == indent && value_after_key(l.text, key).is_some())?;
    let line = block[position];
    let value = value_after_key(line.text, key)?;
    let mut inner = Vec::new();
    if !value.is_empty() {
        inner.push(Line {
            number: line.number,
            column: line.column + (line.text.len() - value.len()),
            text: value,
        });
    }
    inner.extend(
        block[position + 1..]
            .iter()
            .take_while(|l| l.column > indent),
    );
    Some((line, inner))
}

/// The `index`-th `- ` item of a block sequence, its first line re-indented
/// past the dash so that its keys line up with the lines below.
fn item_block<'a>(block: &[Line<'a>], index: usize) -> Option<(Line<'a>, Vec<Line<'a>>)> {
    let indent = block.first()?.column;
    let starts: Vec<usize> = block
        .iter()
        .enumerate()
        .filter(|(_, l)| l.column == indent && (l.text.starts_with("- ") || l.text == "-"))
        .map(|(i, _)| i)
        .collect();
    let start = *starts.get(index)?;
    let line = block[start];
    let rest = line.text[1..].trim_start();
    let mut inner = Vec::new();
    if !rest.is_empty() {
        inner.push(Line {
            number: line.number,
            column: line.column + (line.text.len() - rest.len()),
            text: rest,
        });
    }
    inner.extend(block[start + 1..].iter().take_while(|l| l.column > indent));
    Some((line, inner))
}

/// The text after `key:` when the line starts with that key (bare or quoted).
fn value_after_key<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    for quoted in [key.to_owned(), format!("\"{key}\""), format!("'{key}'")] {
        if let Some(rest) = text.strip_prefix(quoted.as_str())
            && let Some(value) = rest.strip_prefix(':')
            && (value.is_empty() || value.starts_with(' '))
        {
            let value = value.trim();
            // `key:   # comment` has its value on the following lines.
            return Some(if value.starts_with('#') { "" } else { value });
        }
    }
    None
}

/// Offset of `key:` inside a one-line flow mapping.
fn find_flow_key(text: &str, key: &str) -> Option<usize> {
    let bytes = text.as_bytes();
    text.match_indices(key).find_map(|(at, _)| {
        let before = at.checked_sub(1).map(|i| bytes[i]);
        let boundary = matches!(before, Some(b'{' | b',' | b' ' | b'"' | b'\''));
        let after = text[at + key.len()..].trim_start_matches(['"', '\'']);
        (boundary && after.starts_with(':')).then_some(at)
    })
}

/// Parse the dotted path that serde_yaml and `compile` print (`routes[2].upstream`).
pub fn parse_path(path: &str) -> Vec<Step> {
    let mut steps = Vec::new();
    for part in path.split('.') {
        let (key, mut indexes) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if !key.is_empty() {
            steps.push(Step::Key(key.to_owned()));
        }
        while let Some(end) = indexes.find(']') {
            if let Some(Ok(i)) = indexes.get(1..end).map(str::parse) {
                steps.push(Step::Index(i));
            }
            indexes = &indexes[end + 1..];
        }
    }
    steps
}

#[cfg(test)]
mod tests {
    use super::*;

    const YAML: &str = "\
listen: 127.0.0.1:8080
# a comment
providers:
  - name: main
    issuer: https://issuer
    algorithms: [RS256]
upstreams:
  orders: { url: http://x, timeout: 3s }
routes:
  - { path: /health, upstream: orders, auth: none }
  - path: /profile
    upstream: nowhere
    claims:
      tenant: acme
";

    fn at(path: &str) -> Option<(usize, usize)> {
        locate(YAML, &parse_path(path))
    }

    #[test]
    fn block_keys_and_items_are_found() {
        assert_eq!(at("listen"), Some((1, 1)));
        assert_eq!(at("providers[0].issuer"), Some((5, 5)));
        assert_eq!(at("routes[1].upstream"), Some((12, 5)));
        assert_eq!(at("routes[1].claims.tenant"), Some((14, 7)));
    }

    #[test]
    fn flow_mappings_point_at_the_key() {
        assert_eq!(at("routes[0].upstream"), Some((10, 22)));
        assert_eq!(at("upstreams.orders.timeout"), Some((8, 28)));
        assert_eq!(at("providers[0].algorithms"), Some((6, 5)));
    }

    #[test]
    fn a_missing_step_answers_the_deepest_line_found() {
        assert_eq!(at("routes[1].nothing"), Some((11, 3)));
        assert_eq!(at("nothing"), None);
    }
}
