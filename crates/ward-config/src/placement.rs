//! Where Deployment replicas live outside Kubernetes: each workload gets a slot in
//! 127.0.0.0/8 and each replica a sidecar and an app address in it. The plan is a pure
//! function of the set of workloads, so xds-server (which configures the sidecars) and
//! `wardctl up` (which starts them) agree on every address without talking to each other.
//! Pods discovered from Kubernetes bring their own IPs and never come here.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use crate::model::Instance;

/// Addresses: 246 second octets (10..=255) × 254 third octets (1..=254) of 127.0.0.0/8.
const SLOTS: u64 = 246 * 254;

fn fnv1a(text: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in text.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// One slot per workload: a hash of `namespace/name`, collisions resolved by linear probing
/// in sorted order. The result depends only on the set of workloads, and adding one moves
/// another only if it takes the slot that one had probed past.
pub(crate) fn assign_slots<'a>(keys: impl Iterator<Item = (&'a str, &'a str)>) -> Vec<u64> {
    let mut used = BTreeSet::new();
    keys.map(|(namespace, name)| {
        let mut slot = fnv1a(&format!("{namespace}/{name}")) % SLOTS;
        while !used.insert(slot) {
            slot = (slot + 1) % SLOTS;
        }
        slot
    })
    .collect()
}

fn slot_address(slot: u64, last_octet: u32) -> Ipv4Addr {
    Ipv4Addr::new(
        127,
        (10 + slot / 254) as u8,
        (1 + slot % 254) as u8,
        last_octet as u8,
    )
}

pub(crate) fn instances(name: &str, replicas: u32, slot: u64) -> Vec<Instance> {
    (0..replicas)
        .map(|i| Instance {
            name: format!("{name}-{i}"),
            index: i,
            address: slot_address(slot, i + 1),
            app_address: slot_address(slot, i + 1 + 128),
            ready: true,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_addresses_cover_the_documented_range() {
        assert_eq!(slot_address(0, 1), Ipv4Addr::new(127, 10, 1, 1));
        assert_eq!(slot_address(253, 129), Ipv4Addr::new(127, 10, 254, 129));
        assert_eq!(slot_address(254, 1), Ipv4Addr::new(127, 11, 1, 1));
        assert_eq!(
            slot_address(SLOTS - 1, 228),
            Ipv4Addr::new(127, 255, 254, 228)
        );
    }

    #[test]
    fn collisions_probe_to_the_next_free_slot() {
        let keys = [("a", "x"), ("a", "x"), ("a", "x")];
        let slots = assign_slots(keys.into_iter());
        let first = slots[0];
        assert_eq!(slots, vec![first, (first + 1) % SLOTS, (first + 2) % SLOTS]);
    }
}
