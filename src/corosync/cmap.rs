//! A few reads from corosync's configuration map (one short-lived cmap handle per call).

use std::collections::BTreeMap;

use rust_corosync::cmap::{self, Data};

use super::CorosyncError;

fn open() -> Result<cmap::Handle, CorosyncError> {
    cmap::initialize(cmap::Map::Icmap).map_err(|e| CorosyncError::unavailable("cmap", e))
}

/// `totem.cluster_name`.
pub fn cluster_name() -> Result<String, CorosyncError> {
    let handle = open()?;
    match cmap::get(&handle, "totem.cluster_name") {
        Ok(Data::String(name)) => Ok(name),
        Ok(other) => Err(CorosyncError::Call {
            call: "cmap_get(totem.cluster_name)",
            reason: format!("not a string: {other}"),
        }),
        Err(e) => Err(CorosyncError::call("cmap_get(totem.cluster_name)", e)),
    }
}

/// The configured nodes, sorted by node id: `nodelist.node.N.nodeid` with `.name` (or
/// `.ring0_addr` when there is no name). Entries without a node id are skipped.
pub fn nodes() -> Result<Vec<(u32, Option<String>)>, CorosyncError> {
    #[derive(Default)]
    struct Node {
        nodeid: Option<u32>,
        name: Option<String>,
        ring0: Option<String>,
    }
    const PREFIX: &str = "nodelist.node.";
    let handle = open()?;
    let iter = cmap::CmapIterStart::new(&handle, PREFIX)
        .map_err(|e| CorosyncError::call("cmap_iter_init(nodelist.node.)", e))?;
    let mut by_index: BTreeMap<u32, Node> = BTreeMap::new();
    for item in iter {
        let Some(rest) = item.key_name().strip_prefix(PREFIX) else {
            continue;
        };
        let Some((index, field)) = rest.split_once('.') else {
            continue;
        };
        let Ok(index) = index.parse::<u32>() else {
            continue;
        };
        let node = by_index.entry(index).or_default();
        match field {
            "nodeid" => node.nodeid = as_u32(item.data()),
            "name" => node.name = as_string(item.data()),
            "ring0_addr" => node.ring0 = as_string(item.data()),
            _ => {}
        }
    }
    drop(handle);
    let mut nodes: Vec<(u32, Option<String>)> = Vec::new();
    for (index, node) in by_index {
        match node.nodeid {
            Some(id) => nodes.push((id, node.name.or(node.ring0))),
            None => tracing::warn!(index, "nodelist.node.{index} has no usable nodeid; ignored"),
        }
    }
    nodes.sort();
    nodes.dedup_by_key(|(id, _)| *id);
    Ok(nodes)
}

fn as_u32(data: &Data) -> Option<u32> {
    match data {
        Data::UInt8(v) => Some(u32::from(*v)),
        Data::UInt16(v) => Some(u32::from(*v)),
        Data::UInt32(v) => Some(*v),
        Data::UInt64(v) => u32::try_from(*v).ok(),
        Data::Int8(v) => u32::try_from(*v).ok(),
        Data::Int16(v) => u32::try_from(*v).ok(),
        Data::Int32(v) => u32::try_from(*v).ok(),
        Data::Int64(v) => u32::try_from(*v).ok(),
        Data::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn as_string(data: &Data) -> Option<String> {
    match data {
        Data::String(s) if !s.is_empty() => Some(s.clone()),
        _ => None,
    }
}
