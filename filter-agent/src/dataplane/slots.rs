//! Interface counter slots: each attached interface counts under a slot of its own, found
//! by the program through IFINDEX_SLOTS; INTERFACE_SLOTS records which interface (name and
//! ifindex) holds each slot, so names survive restarts and stale ifindex entries can be
//! cleared when an interface is recreated.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use filter_common::{IFINDEX_SLOTS_ENTRIES, INTERFACE_NAME_MAX, InterfaceSlot, MAX_INTERFACES};

use super::{Dataplane, fixed_name, read_fixed_name};

/// A slot's owner.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotOwner {
    pub interface: String,
    pub ifindex: u32,
}

fn encode(interface: &str, ifindex: u32) -> Result<InterfaceSlot> {
    Ok(InterfaceSlot {
        ifindex,
        name: fixed_name("interface", interface)?,
    })
}

impl Dataplane {
    /// Slot -> interface, for every slot in use.
    pub fn interface_slots(&mut self) -> Result<BTreeMap<u32, SlotOwner>> {
        let map = self.interface_slots_map()?;
        let mut slots = BTreeMap::new();
        for slot in 1..=MAX_INTERFACES {
            let entry = map.get(&slot, 0)?;
            if entry.ifindex != 0 {
                let interface = read_fixed_name(&entry.name);
                slots.insert(
                    slot,
                    SlotOwner {
                        interface,
                        ifindex: entry.ifindex,
                    },
                );
            }
        }
        Ok(slots)
    }

    /// Gives `interface` (now at `ifindex`) a counter slot: the one it had, else the lowest
    /// free one. Counters of a slot that changes hands keep counting from where they were,
    /// which Prometheus tolerates; the slot is named after its interface.
    pub fn assign_interface_slot(&mut self, interface: &str, ifindex: u32) -> Result<u32> {
        let slots = self.interface_slots()?;
        let existing = slots.iter().find(|(_, o)| o.interface == interface);
        let slot = match existing {
            Some((&slot, owner)) => {
                if owner.ifindex != ifindex {
                    // The interface was recreated: its old ifindex no longer belongs to it.
                    self.set_ifindex_slot(owner.ifindex, 0)?;
                }
                slot
            }
            None => (1..=MAX_INTERFACES)
                .find(|slot| !slots.contains_key(slot))
                .with_context(|| {
                    format!("more than {MAX_INTERFACES} interfaces have counter slots")
                })?,
        };
        self.interface_slots_map()?
            .set(slot, encode(interface, ifindex)?, 0)?;
        self.set_ifindex_slot(ifindex, slot)?;
        Ok(slot)
    }

    /// Frees the slot of `interface`, if it has one.
    pub fn release_interface_slot(&mut self, interface: &str) -> Result<()> {
        for (slot, owner) in self.interface_slots()? {
            if owner.interface == interface {
                self.set_ifindex_slot(owner.ifindex, 0)?;
                self.interface_slots_map()?.set(
                    slot,
                    InterfaceSlot {
                        ifindex: 0,
                        name: [0; INTERFACE_NAME_MAX],
                    },
                    0,
                )?;
            }
        }
        Ok(())
    }

    fn set_ifindex_slot(&mut self, ifindex: u32, slot: u32) -> Result<()> {
        // Interfaces with higher ifindex values count under slot 0.
        if ifindex < IFINDEX_SLOTS_ENTRIES {
            self.ifindex_slots()?.set(ifindex, slot, 0)?;
        }
        Ok(())
    }
}
