//! The device's command inbox, held by the device actor (see the commands-down work).

use ractor::{ActorProcessingErr, ActorRef};

use crate::device::DeviceMsg;
use crate::system::Shared;

/// Messages about commands for one device.
#[derive(Debug)]
pub enum InboxMsg {}

/// The inbox part of a device actor's state.
#[derive(Debug, Default)]
pub struct InboxState {}

pub async fn handle(
    _myself: &ActorRef<DeviceMsg>,
    msg: InboxMsg,
    _state: &mut InboxState,
    _shared: &Shared,
) -> Result<(), ActorProcessingErr> {
    match msg {}
}
