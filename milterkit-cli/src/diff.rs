//! A readable line diff of a message before and after the milter.

/// One line of a diff.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Line<'a> {
    Same(&'a str),
    Removed(&'a str),
    Added(&'a str),
    /// Unchanged lines left out.
    Skipped(usize),
}

/// Above this many lines on either side, only the lines that differ at the start and end are
/// compared (a replaced multi-megabyte body is summarised, not diffed line by line).
const MAX_LINES: usize = 4000;

/// Unchanged lines kept around each change.
const CONTEXT: usize = 2;

/// The diff of `old` and `new`, by lines, with unchanged runs shortened.
pub(crate) fn diff<'a>(old: &'a str, new: &'a str) -> Vec<Line<'a>> {
    let a: Vec<&str> = old.lines().collect();
    let b: Vec<&str> = new.lines().collect();
    let prefix = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let suffix = a[prefix..]
        .iter()
        .rev()
        .zip(b[prefix..].iter().rev())
        .take_while(|(x, y)| x == y)
        .count();
    let (am, bm) = (&a[prefix..a.len() - suffix], &b[prefix..b.len() - suffix]);
    let mut full: Vec<Line<'a>> = a[..prefix].iter().map(|l| Line::Same(l)).collect();
    if am.len() > MAX_LINES || bm.len() > MAX_LINES {
        full.extend(am.iter().map(|l| Line::Removed(l)));
        full.extend(bm.iter().map(|l| Line::Added(l)));
    } else {
        full.extend(lcs(am, bm));
    }
    full.extend(a[a.len() - suffix..].iter().map(|l| Line::Same(l)));
    shorten(full)
}

/// Classic longest-common-subsequence diff.
fn lcs<'a>(a: &[&'a str], b: &[&'a str]) -> Vec<Line<'a>> {
    let (n, m) = (a.len(), b.len());
    let mut t = vec![vec![0u32; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            t[i][j] = if a[i] == b[j] {
                t[i + 1][j + 1] + 1
            } else {
                t[i + 1][j].max(t[i][j + 1])
            };
        }
    }
    let (mut i, mut j) = (0, 0);
    let mut out = Vec::new();
    while i < n || j < m {
        if i < n && j < m && a[i] == b[j] {
            out.push(Line::Same(a[i]));
            i += 1;
            j += 1;
        } else if i < n && (j == m || t[i + 1][j] >= t[i][j + 1]) {
            out.push(Line::Removed(a[i]));
            i += 1;
        } else {
            out.push(Line::Added(b[j]));
            j += 1;
        }
    }
    out
}

/// Keeps `CONTEXT` unchanged lines around each change; longer unchanged runs become `Skipped`.
fn shorten(lines: Vec<Line<'_>>) -> Vec<Line<'_>> {
    let changed: Vec<bool> = lines.iter().map(|l| !matches!(l, Line::Same(_))).collect();
    let near = |i: usize| {
        let lo = i.saturating_sub(CONTEXT);
        let hi = (i + CONTEXT + 1).min(changed.len());
        changed[lo..hi].iter().any(|c| *c)
    };
    let mut out = Vec::new();
    let mut skipped = 0;
    for (i, l) in lines.into_iter().enumerate() {
        if matches!(l, Line::Same(_)) && !near(i) {
            skipped += 1;
            continue;
        }
        if skipped > 0 {
            out.push(Line::Skipped(skipped));
            skipped = 0;
        }
        out.push(l);
    }
    if skipped > 0 {
        out.push(Line::Skipped(skipped));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shows_changes_with_two_lines_of_context() {
        let old = "a\nb\nc\nd\ne\nf\ng\n";
        let new = "a\nb\nc\nX\ne\nf\ng\nh\n";
        assert_eq!(
            diff(old, new),
            [
                Line::Skipped(1),
                Line::Same("b"),
                Line::Same("c"),
                Line::Removed("d"),
                Line::Added("X"),
                Line::Same("e"),
                Line::Same("f"),
                Line::Same("g"),
                Line::Added("h"),
            ]
        );
    }

    #[test]
    fn an_unchanged_message_is_one_skipped_run() {
        assert_eq!(diff("a\nb\n", "a\nb\n"), [Line::Skipped(2)]);
    }
}
