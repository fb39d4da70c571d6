//! A readable line diff of a message before and after the milter.

use std::time::{Duration, Instant};

use similar::DiffTag;

/// One line of a diff.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Line<'a> {
    Same(&'a str),
    Removed(&'a str),
    Added(&'a str),
    /// Unchanged lines left out.
    Skipped(usize),
}

/// Longest time spent looking for the smallest diff; past it the diff is still correct, only
/// coarser (`similar`'s deadline: a replaced multi-megabyte body is summarised quickly).
const DEADLINE: Duration = Duration::from_millis(500);

/// Unchanged lines kept around each change.
const CONTEXT: usize = 2;

/// The diff of `old` and `new`, by lines (Myers' algorithm, memory linear in the lines), with
/// unchanged runs shortened.
pub(crate) fn diff<'a>(old: &'a str, new: &'a str) -> Vec<Line<'a>> {
    let a: Vec<&str> = old.lines().collect();
    let b: Vec<&str> = new.lines().collect();
    let ops = similar::capture_diff_slices_deadline(
        similar::Algorithm::Myers,
        &a,
        &b,
        Instant::now().checked_add(DEADLINE),
    );
    let mut full = Vec::with_capacity(a.len().max(b.len()));
    for op in ops {
        let (tag, olds, news) = op.as_tag_tuple();
        match tag {
            DiffTag::Equal => full.extend(a[olds].iter().map(|l| Line::Same(l))),
            DiffTag::Delete | DiffTag::Insert | DiffTag::Replace => {
                full.extend(a[olds].iter().map(|l| Line::Removed(l)));
                full.extend(b[news].iter().map(|l| Line::Added(l)));
            }
        }
    }
    shorten(full)
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
    fn a_large_message_with_many_changes_is_diffed_in_little_time_and_memory() {
        // 20,000 lines, every tenth changed: the old table would have been 20,000² cells.
        let old: String = (0..20_000).map(|i| format!("line {i}\n")).collect();
        let new: String = (0..20_000)
            .map(|i| {
                if i % 10 == 0 {
                    format!("changed {i}\n")
                } else {
                    format!("line {i}\n")
                }
            })
            .collect();
        let start = Instant::now();
        let d = diff(&old, &new);
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{:?}",
            start.elapsed()
        );
        let removed = d.iter().filter(|l| matches!(l, Line::Removed(_))).count();
        let added = d.iter().filter(|l| matches!(l, Line::Added(_))).count();
        assert_eq!((removed, added), (2_000, 2_000));
        assert_eq!(d[0], Line::Removed("line 0"));
        assert_eq!(d[1], Line::Added("changed 0"));
    }

    #[test]
    fn an_unchanged_message_is_one_skipped_run() {
        assert_eq!(diff("a\nb\n", "a\nb\n"), [Line::Skipped(2)]);
    }
}
