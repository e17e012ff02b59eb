//! Where passing crops go: the local spool, or an HTTP server through a
//! durable queue (the crop counts as accepted once it is on disk).

pub mod budget;
pub mod cause;
pub mod queue;
pub mod spool;
pub mod tls;
pub mod upload;

use std::sync::Arc;

use anyhow::Result;

use crate::record::Crop;
use queue::{Pushed, Queue};
use spool::Spool;

/// A camera's sink.
pub enum Sink {
    /// Files in a spool directory.
    Spool(Spool),
    /// The durable queue of an uploader.
    Upload(Arc<Queue>),
}

impl Sink {
    /// Takes a crop; false when a full queue refused it.
    pub fn accept(&self, crop: &Crop) -> Result<bool> {
        match self {
            Sink::Spool(spool) => spool.write(crop).map(|_| true),
            Sink::Upload(queue) => Ok(matches!(queue.push(crop)?, Pushed::Accepted { .. })),
        }
    }
}
