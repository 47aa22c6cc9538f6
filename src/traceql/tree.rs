//! The span tree of a trace, from its spans' nested-set numbers: what the structural
//! operators walk.

use crate::model::NestedSet;

/// The span tree from the nested-set numbers.
#[derive(Debug, PartialEq)]
pub(super) struct Tree {
    /// Parent index.
    pub(super) parent: Vec<Option<usize>>,
    /// Span indices in nested-set `left` order: every parent before its children.
    pub(super) preorder: Vec<usize>,
}

impl Tree {
    pub(super) fn new(sets: &[NestedSet]) -> Tree {
        Tree::by_left(sets).unwrap_or_else(|| Tree::sorted(sets))
    }

    /// The tree of a trace numbered whole: its `left`s are distinct and within 1..=2n, so
    /// spans are indexed by `left` directly, without the sort and the searches. `None`
    /// for anything else (parts of a trace numbered apart, spans without numbers).
    fn by_left(sets: &[NestedSet]) -> Option<Tree> {
        const NONE: u32 = u32::MAX;
        let slots = 2 * sets.len() + 1;
        let mut at = vec![NONE; slots];
        for (i, s) in sets.iter().enumerate() {
            let left = usize::try_from(s.left)
                .ok()
                .filter(|&l| l > 0 && l < slots)?;
            if at[left] != NONE {
                return None;
            }
            at[left] = u32::try_from(i).ok()?;
        }
        let preorder = at
            .iter()
            .filter(|&&i| i != NONE)
            .map(|&i| i as usize)
            .collect();
        let parent = sets
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let p = *at.get(usize::try_from(s.parent).ok().filter(|&p| p > 0)?)?;
                (p != NONE && p as usize != i).then_some(p as usize)
            })
            .collect();
        Some(Tree { parent, preorder })
    }

    /// The tree of any numbering: spans sorted by `left`, parents found by search.
    fn sorted(sets: &[NestedSet]) -> Tree {
        let mut keyed: Vec<(i32, usize)> = sets.iter().map(|s| s.left).zip(0..).collect();
        keyed.sort_unstable();
        let preorder: Vec<usize> = keyed.iter().map(|&(_, i)| i).collect();
        // The span whose `left` is the parent number; of several, the last in span
        // order (as a map built in span order would keep). Lefts <= 0 are no span's.
        let parent = sets
            .iter()
            .enumerate()
            .map(|(i, s)| {
                if s.parent <= 0 {
                    return None;
                }
                let end = keyed.partition_point(|&(l, _)| l <= s.parent);
                let &(l, p) = keyed.get(end.checked_sub(1)?)?;
                (l == s.parent && p != i).then_some(p)
            })
            .collect();
        Tree { parent, preorder }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(left: i32, right: i32, parent: i32) -> NestedSet {
        NestedSet {
            left,
            right,
            parent,
        }
    }

    /// root(1,10) ─┬─ a(2,7) ─┬─ a1(3,4)
    ///             │          └─ a2(5,6)
    ///             └─ b(8,9)
    /// in span order b, a2, root, a1, a: not preorder.
    fn whole() -> Vec<NestedSet> {
        vec![
            set(8, 9, 1),
            set(5, 6, 2),
            set(1, 10, 0),
            set(3, 4, 2),
            set(2, 7, 1),
        ]
    }

    #[test]
    fn a_whole_numbering_indexes_by_left_as_the_sort_would() {
        let sets = whole();
        let direct = Tree::by_left(&sets).expect("numbered whole");
        assert_eq!(direct, Tree::sorted(&sets));
        assert_eq!(direct.preorder, vec![2, 4, 3, 1, 0]);
        assert_eq!(
            direct.parent,
            vec![Some(2), Some(4), None, Some(4), Some(2)]
        );
    }

    #[test]
    fn other_numberings_take_the_sort() {
        // Parts of a trace numbered apart: lefts repeat.
        let mut twice = whole();
        twice.extend(whole());
        assert_eq!(Tree::by_left(&twice), None);
        let tree = Tree::new(&twice);
        assert_eq!(tree, Tree::sorted(&twice));
        assert_eq!(
            tree.parent[5],
            Some(7),
            "of two spans with the parent's left, the last in span order"
        );
        // Past 2n, or missing (0): by search.
        let far: Vec<NestedSet> = whole()
            .iter()
            .map(|s| {
                set(
                    s.left + 100,
                    s.right + 100,
                    if s.parent > 0 { s.parent + 100 } else { 0 },
                )
            })
            .collect();
        assert_eq!(Tree::by_left(&far), None);
        assert_eq!(
            Tree::new(&far).parent,
            Tree::by_left(&whole()).unwrap().parent
        );
        let unnumbered = vec![set(0, 0, 0); 3];
        assert_eq!(Tree::by_left(&unnumbered), None);
        assert_eq!(Tree::new(&unnumbered).parent, vec![None; 3]);
    }

    #[test]
    fn a_span_is_not_its_own_parent() {
        let sets = vec![set(1, 4, 0), set(2, 3, 2)];
        let tree = Tree::new(&sets);
        assert_eq!(tree.parent, vec![None, None]);
        assert_eq!(tree, Tree::sorted(&sets));
    }
}
