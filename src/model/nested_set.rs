//! Nested-set numbering of a trace's span tree, the shape TraceQL's structural operators and
//! the block format both use.
//!
//! Numbers come from one depth-first walk: a span gets `left` when the walk enters it and
//! `right` when it leaves, so `b` is a descendant of `a` exactly when
//! `a.left < b.left && b.right < a.right`, and `parent` is the parent's `left`.

use std::collections::HashMap;

/// Nested-set numbers of one span. Roots (no parent, or a parent that is not in the trace)
/// have `parent == -1`; numbering starts at 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NestedSet {
    pub left: i32,
    pub right: i32,
    pub parent: i32,
}

impl NestedSet {
    /// True when `self` lies strictly inside `ancestor`.
    pub fn is_descendant_of(&self, ancestor: &NestedSet) -> bool {
        ancestor.left < self.left && self.right < ancestor.right
    }

    pub fn is_child_of(&self, parent: &NestedSet) -> bool {
        self.parent != -1 && self.parent == parent.left
    }
}

/// The index of each span's parent among `spans` (`(span_id, parent_span_id)` pairs in
/// storage order). A parent that is missing, empty or the span itself gives `None`; when span
/// IDs repeat, the first span with an ID is the parent of that ID's children.
pub fn parent_indices(spans: &[(&[u8], &[u8])]) -> Vec<Option<usize>> {
    let mut first: HashMap<&[u8], usize> = HashMap::with_capacity(spans.len());
    for (i, (id, _)) in spans.iter().enumerate() {
        first.entry(*id).or_insert(i);
    }
    spans
        .iter()
        .enumerate()
        .map(|(i, (_, parent))| {
            if parent.is_empty() {
                return None;
            }
            first.get(parent).copied().filter(|&p| p != i)
        })
        .collect()
}

/// Nested-set numbers for spans given their parent indices (see [`parent_indices`]). Roots
/// are walked in storage order, children in storage order. Spans in a parent cycle are not
/// reachable from a root; each such cycle is numbered afterwards from its first member.
/// Children are kept in one flat array (CSR) rather than a `Vec` per span: the block writer
/// numbers every span it writes.
pub fn nested_sets(parents: &[Option<usize>]) -> Vec<NestedSet> {
    let n = parents.len();
    // child_start[p]..child_start[p + 1] indexes `children`.
    let mut child_start = vec![0usize; n + 1];
    for p in parents.iter().flatten() {
        child_start[p + 1] += 1;
    }
    for i in 0..n {
        child_start[i + 1] += child_start[i];
    }
    let mut fill = child_start.clone();
    let mut children = vec![0usize; n];
    for (i, p) in parents.iter().enumerate() {
        if let Some(p) = p {
            children[fill[*p]] = i;
            fill[*p] += 1;
        }
    }
    let unset = NestedSet {
        left: 0,
        right: 0,
        parent: -1,
    };
    let mut out = vec![unset; n];
    let mut seen = vec![false; n];
    let mut next: i32 = 0;
    // (span, position in `children` of the next child to visit)
    let mut stack: Vec<(usize, usize)> = Vec::new();
    let starts = (0..n).filter(|&i| parents[i].is_none()).chain(0..n);
    for start in starts {
        if seen[start] {
            continue;
        }
        seen[start] = true;
        next = next.saturating_add(1);
        out[start].left = next;
        stack.push((start, child_start[start]));
        while let Some(top) = stack.last_mut() {
            let (span, cursor) = *top;
            if cursor < child_start[span + 1] {
                top.1 += 1;
                let child = children[cursor];
                if !seen[child] {
                    seen[child] = true;
                    next = next.saturating_add(1);
                    out[child] = NestedSet {
                        left: next,
                        right: 0,
                        parent: out[span].left,
                    };
                    stack.push((child, child_start[child]));
                }
            } else {
                next = next.saturating_add(1);
                out[span].right = next;
                stack.pop();
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ns(left: i32, right: i32, parent: i32) -> NestedSet {
        NestedSet {
            left,
            right,
            parent,
        }
    }

    #[test]
    fn numbers_a_tree() {
        // a ─┬─ b ── d
        //    └─ c
        let spans: [(&[u8], &[u8]); 4] = [(b"a", b""), (b"b", b"a"), (b"c", b"a"), (b"d", b"b")];
        let parents = parent_indices(&spans);
        assert_eq!(parents, vec![None, Some(0), Some(0), Some(1)]);
        let sets = nested_sets(&parents);
        assert_eq!(
            sets,
            vec![ns(1, 8, -1), ns(2, 5, 1), ns(6, 7, 1), ns(3, 4, 2)]
        );
        assert!(sets[3].is_descendant_of(&sets[0]));
        assert!(!sets[2].is_descendant_of(&sets[1]));
        assert!(sets[3].is_child_of(&sets[1]));
    }

    #[test]
    fn orphans_are_roots_and_cycles_terminate() {
        let spans: [(&[u8], &[u8]); 3] = [(b"a", b"zz"), (b"b", b"c"), (b"c", b"b")];
        let parents = parent_indices(&spans);
        assert_eq!(parents, vec![None, Some(2), Some(1)]);
        let sets = nested_sets(&parents);
        assert_eq!(sets[0], ns(1, 2, -1));
        assert_eq!(sets[1], ns(3, 6, -1));
        assert_eq!(sets[2], ns(4, 5, 3));
    }

    #[test]
    fn children_before_parents_self_parents_and_long_chains() {
        let number = |spans: &[(&[u8], &[u8])]| nested_sets(&parent_indices(spans));
        let spans: [(&[u8], &[u8]); 4] =
            [(b"d", b"b"), (b"b", b"a"), (b"a", b""), (b"o", b"missing")];
        assert_eq!(
            number(&spans),
            vec![ns(3, 4, 2), ns(2, 5, 1), ns(1, 6, -1), ns(7, 8, -1)]
        );
        assert_eq!(number(&[(b"s", b"s")]), vec![ns(1, 2, -1)]);
        // A cycle reached after a real root: x starts it, y and z below it.
        let spans: [(&[u8], &[u8]); 4] = [(b"x", b"y"), (b"y", b"x"), (b"r", b""), (b"z", b"x")];
        let got = number(&spans);
        assert_eq!(
            got,
            vec![ns(3, 8, -1), ns(4, 5, 3), ns(1, 2, -1), ns(6, 7, 3)]
        );
        // A long chain does not overflow the stack.
        let ids: Vec<[u8; 4]> = (0u32..100_000).map(|i| i.to_be_bytes()).collect();
        let spans: Vec<(&[u8], &[u8])> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| (&id[..], if i == 0 { &[][..] } else { &ids[i - 1][..] }))
            .collect();
        assert_eq!(number(&spans)[99_999], ns(100_000, 100_001, 99_999));
    }
}
