//! The public module paths (layer 8): `chargetree::group` and `chargetree::objgroup` gather
//! what the layers below define, so that a user finds a tree, its groups, the engine's
//! options and the object charging where the crate's docs say, whichever layer each lives
//! in.

pub mod group;
pub mod objgroup;
