//! A run's cost as passes of one latent through a network, counted where the passes happen: unlike seconds, the
//! count does not depend on the machine, so settings are compared by it (BENCHMARKS.md "Cost-quality frontier").
use serde::{Deserialize, Serialize};
use std::cell::Cell;
use std::ops::{Add, AddAssign, Sub};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Passes {
    /// Through the network up to h (a UNet's down blocks and mid block; a DiT's blocks up to the one h is read
    /// after), forward only.
    pub encoder_forward: u64,
    /// Through the network up to h, forward and backward (one alignment iteration of one latent).
    pub encoder_backward: u64,
    /// Through the whole network (UNet or DiT; the name is kept, as run.json records it) while sampling, one per
    /// latent and guidance branch.
    pub unet_forward: u64,
}

impl Add for Passes {
    type Output = Passes;
    fn add(self, other: Passes) -> Passes {
        Passes {
            encoder_forward: self.encoder_forward + other.encoder_forward,
            encoder_backward: self.encoder_backward + other.encoder_backward,
            unet_forward: self.unet_forward + other.unet_forward,
        }
    }
}

impl Sub for Passes {
    type Output = Passes;
    /// What was counted between two readings of one counter (`self` the later).
    fn sub(self, earlier: Passes) -> Passes {
        Passes {
            encoder_forward: self.encoder_forward - earlier.encoder_forward,
            encoder_backward: self.encoder_backward - earlier.encoder_backward,
            unet_forward: self.unet_forward - earlier.unet_forward,
        }
    }
}

impl AddAssign for Passes {
    fn add_assign(&mut self, other: Passes) {
        *self = *self + other;
    }
}

impl std::iter::Sum for Passes {
    fn sum<I: Iterator<Item = Passes>>(iter: I) -> Passes {
        iter.fold(Passes::default(), Add::add)
    }
}

/// A running count, kept by whatever runs the network (shared by reference, single-threaded).
#[derive(Debug, Default)]
pub struct PassCounter(Cell<Passes>);

impl PassCounter {
    pub fn add(&self, passes: Passes) {
        self.0.set(self.0.get() + passes);
    }

    pub fn get(&self) -> Passes {
        self.0.get()
    }
}
