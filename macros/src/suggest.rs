//! "Did you mean ..?": the closest of the known names to a misspelled one.

/// The name in `known` closest to `typed` by edit distance, if it is close enough to be the one
/// meant: at most one edit for names up to four letters, two for longer ones, and never as many
/// edits as the misspelled name has letters.
pub(crate) fn closest<'a>(typed: &str, known: &[&'a str]) -> Option<&'a str> {
    let limit = if typed.chars().count() <= 4 { 1 } else { 2 };
    known
        .iter()
        .map(|name| (edit_distance(typed, name), *name))
        .filter(|&(distance, _)| distance <= limit && distance < typed.chars().count())
        .min_by_key(|&(distance, _)| distance)
        .map(|(_, name)| name)
}

/// The Damerau–Levenshtein distance (optimal string alignment): insertions, deletions,
/// substitutions and swaps of two neighbouring letters each count one.
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    // rows[i][j]: the distance between a[..i] and b[..j].
    let mut rows = vec![vec![0; b.len() + 1]; a.len() + 1];
    for (i, row) in rows.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in rows[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (rows[i - 1][j] + 1).min(rows[i][j - 1] + 1).min(rows[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(rows[i - 2][j - 2] + 1);
            }
            rows[i][j] = best;
        }
    }
    rows[a.len()][b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEYS: &[&str] = &["topic", "publish", "group", "concurrency", "name", "pubsub", "codec", "crate"];

    #[test]
    fn distances() {
        assert_eq!(edit_distance("topik", "topic"), 1);
        assert_eq!(edit_distance("tpoic", "topic"), 1);
        assert_eq!(edit_distance("concurency", "concurrency"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("group", "group"), 0);
    }

    #[test]
    fn suggests_the_key_meant() {
        assert_eq!(closest("topik", KEYS), Some("topic"));
        assert_eq!(closest("tpoic", KEYS), Some("topic"));
        assert_eq!(closest("concurency", KEYS), Some("concurrency"));
        assert_eq!(closest("publsh", KEYS), Some("publish"));
        assert_eq!(closest("krate", KEYS), Some("crate"));
    }

    #[test]
    fn suggests_nothing_for_an_unrelated_name() {
        assert_eq!(closest("retries", KEYS), None);
        assert_eq!(closest("x", KEYS), None);
        assert_eq!(closest("grp", KEYS), None);
    }
}
