//! Key encoding. All integers are fixed-width big-endian so that RocksDB's
//! bytewise order is numeric order: a group's entries are one contiguous,
//! index-ordered range.

use ferrolog_types::GroupId;

/// `group ‖ index`: log entries, record batches (index = base offset).
pub fn indexed(group: GroupId, index: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&group.to_be_bytes());
    k[8..].copy_from_slice(&index.to_be_bytes());
    k
}

/// `group ‖ kind`: one value of a kind per group (vote, applied state...).
pub fn singleton(group: GroupId, kind: u8) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[..8].copy_from_slice(&group.to_be_bytes());
    k[8] = kind;
    k
}

/// `group ‖ kind ‖ id`: one value per id of a kind (a partition's
/// producers). Sorts after `singleton(group, kind)` and before the next kind.
pub fn keyed(group: GroupId, kind: u8, id: u64) -> [u8; 17] {
    let mut k = [0u8; 17];
    k[..8].copy_from_slice(&group.to_be_bytes());
    k[8] = kind;
    k[9..].copy_from_slice(&id.to_be_bytes());
    k
}

/// The id of a [`keyed`] key; `None` if it is not 17 bytes.
pub fn keyed_id(key: &[u8]) -> Option<u64> {
    let id: [u8; 8] = key.get(9..17)?.try_into().ok()?;
    (key.len() == 17).then(|| u64::from_be_bytes(id))
}

/// The lower bound (inclusive) of every key of `group`.
pub fn group_start(group: GroupId) -> [u8; 8] {
    group.to_be_bytes()
}

/// The upper bound (exclusive) of every key of `group`: the next group's
/// prefix, or all-ones past the last group (group ids never reach u64::MAX).
pub fn group_end(group: GroupId) -> Vec<u8> {
    match group.0.checked_add(1) {
        Some(next) => next.to_be_bytes().to_vec(),
        None => vec![0xff; 17],
    }
}

/// Splits an indexed key; `None` if it is not 16 bytes.
pub fn split_indexed(key: &[u8]) -> Option<(GroupId, u64)> {
    let g: [u8; 8] = key.get(..8)?.try_into().ok()?;
    let i: [u8; 8] = key.get(8..16)?.try_into().ok()?;
    if key.len() != 16 {
        return None;
    }
    Some((GroupId(u64::from_be_bytes(g)), u64::from_be_bytes(i)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_is_group_then_index() {
        let mut keys = [
            indexed(GroupId(2), 0),
            indexed(GroupId(1), 256),
            indexed(GroupId(1), 1),
            indexed(GroupId(0), u64::MAX),
            indexed(GroupId(1), 255),
        ];
        keys.sort();
        let decoded: Vec<_> = keys.iter().map(|k| split_indexed(k).expect("16 bytes")).collect();
        assert_eq!(
            decoded,
            vec![(GroupId(0), u64::MAX), (GroupId(1), 1), (GroupId(1), 255), (GroupId(1), 256), (GroupId(2), 0)]
        );
    }

    #[test]
    fn group_bounds_enclose_exactly_the_group() {
        let g = GroupId(7);
        let lo = group_start(g).to_vec();
        let hi = group_end(g);
        assert!(lo.as_slice() <= indexed(g, 0).as_slice());
        assert!(indexed(g, u64::MAX).as_slice() < hi.as_slice());
        assert!(singleton(g, 255).as_slice() < hi.as_slice());
        assert!(indexed(GroupId(8), 0).as_slice() >= hi.as_slice());
        assert!(indexed(GroupId(6), u64::MAX).as_slice() < lo.as_slice());
        assert!(indexed(GroupId(u64::MAX), u64::MAX).as_slice() < group_end(GroupId(u64::MAX)).as_slice());
    }
}
