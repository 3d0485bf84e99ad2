//! virtio-gpu wire format (virtio 1.2 §5.7.6, `linux/virtio_gpu.h`): command
//! and response types, and the little-endian decoding of the commands this
//! device serves. Every decoder checks the length first; nothing here trusts
//! a size the guest wrote.

/// Feature: 3D (required by CONTEXT_INIT in the spec and in Linux).
pub const VIRTIO_GPU_F_VIRGL: u32 = 0;
/// Feature: blob resources.
pub const VIRTIO_GPU_F_RESOURCE_BLOB: u32 = 3;
/// Feature: context types (capset id in CTX_CREATE).
pub const VIRTIO_GPU_F_CONTEXT_INIT: u32 = 4;

/// Header flag: the command carries a fence.
pub const FLAG_FENCE: u32 = 1;
/// Header flag: the fence is on the context's ring `ring_idx`.
pub const FLAG_INFO_RING_IDX: u32 = 2;

/// Shared-memory region id of the host-visible window.
pub const SHM_ID_HOST_VISIBLE: u8 = 1;

/// `map_info` cache bits: cached.
pub const MAP_CACHE_CACHED: u32 = 1;
/// `map_info` access bits (rutabaga): readable.
pub const MAP_ACCESS_READ: u32 = 0x10;
/// `map_info` access bits (rutabaga): writable.
pub const MAP_ACCESS_WRITE: u32 = 0x20;

/// Command types.
#[allow(missing_docs)]
pub mod cmd {
    pub const GET_DISPLAY_INFO: u32 = 0x0100;
    pub const RESOURCE_CREATE_2D: u32 = 0x0101;
    pub const RESOURCE_UNREF: u32 = 0x0102;
    pub const SET_SCANOUT: u32 = 0x0103;
    pub const RESOURCE_FLUSH: u32 = 0x0104;
    pub const TRANSFER_TO_HOST_2D: u32 = 0x0105;
    pub const RESOURCE_ATTACH_BACKING: u32 = 0x0106;
    pub const RESOURCE_DETACH_BACKING: u32 = 0x0107;
    pub const GET_CAPSET_INFO: u32 = 0x0108;
    pub const GET_CAPSET: u32 = 0x0109;
    pub const GET_EDID: u32 = 0x010a;
    pub const RESOURCE_ASSIGN_UUID: u32 = 0x010b;
    pub const RESOURCE_CREATE_BLOB: u32 = 0x010c;
    pub const SET_SCANOUT_BLOB: u32 = 0x010d;
    pub const CTX_CREATE: u32 = 0x0200;
    pub const CTX_DESTROY: u32 = 0x0201;
    pub const CTX_ATTACH_RESOURCE: u32 = 0x0202;
    pub const CTX_DETACH_RESOURCE: u32 = 0x0203;
    pub const RESOURCE_CREATE_3D: u32 = 0x0204;
    pub const TRANSFER_TO_HOST_3D: u32 = 0x0205;
    pub const TRANSFER_FROM_HOST_3D: u32 = 0x0206;
    pub const SUBMIT_3D: u32 = 0x0207;
    pub const RESOURCE_MAP_BLOB: u32 = 0x0208;
    pub const RESOURCE_UNMAP_BLOB: u32 = 0x0209;
    pub const UPDATE_CURSOR: u32 = 0x0300;
    pub const MOVE_CURSOR: u32 = 0x0301;
}

/// Response types.
#[allow(missing_docs)]
pub mod resp {
    pub const OK_NODATA: u32 = 0x1100;
    pub const OK_DISPLAY_INFO: u32 = 0x1101;
    pub const OK_CAPSET_INFO: u32 = 0x1102;
    pub const OK_CAPSET: u32 = 0x1103;
    pub const OK_MAP_INFO: u32 = 0x1106;
    pub const ERR_UNSPEC: u32 = 0x1200;
    pub const ERR_OUT_OF_MEMORY: u32 = 0x1201;
    pub const ERR_INVALID_SCANOUT_ID: u32 = 0x1202;
    pub const ERR_INVALID_RESOURCE_ID: u32 = 0x1203;
    pub const ERR_INVALID_CONTEXT_ID: u32 = 0x1204;
    pub const ERR_INVALID_PARAMETER: u32 = 0x1205;
}

/// Size of `virtio_gpu_ctrl_hdr`.
pub const HDR_SIZE: usize = 24;
/// Size of `virtio_gpu_resp_display_info` (16 scanouts).
pub const DISPLAY_INFO_SIZE: usize = HDR_SIZE + 16 * 24;
/// Size of one `virtio_gpu_mem_entry`.
pub const MEM_ENTRY_SIZE: usize = 16;

/// `virtio_gpu_ctrl_hdr`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtrlHdr {
    /// Command or response type.
    pub ty: u32,
    /// FLAG_FENCE, FLAG_INFO_RING_IDX.
    pub flags: u32,
    /// Fence id (with FLAG_FENCE).
    pub fence_id: u64,
    /// Context the command is for.
    pub ctx_id: u32,
    /// Ring of the context (with FLAG_INFO_RING_IDX).
    pub ring_idx: u8,
}

impl CtrlHdr {
    /// Decodes the header at the start of `b`.
    pub fn decode(b: &[u8]) -> Option<Self> {
        Some(Self {
            ty: le32(b, 0)?,
            flags: le32(b, 4)?,
            fence_id: le64(b, 8)?,
            ctx_id: le32(b, 16)?,
            ring_idx: *b.get(20)?,
        })
    }

    /// Encodes the header into its 24 bytes.
    pub fn encode(&self) -> [u8; HDR_SIZE] {
        let mut o = [0u8; HDR_SIZE];
        o[0..4].copy_from_slice(&self.ty.to_le_bytes());
        o[4..8].copy_from_slice(&self.flags.to_le_bytes());
        o[8..16].copy_from_slice(&self.fence_id.to_le_bytes());
        o[16..20].copy_from_slice(&self.ctx_id.to_le_bytes());
        o[20] = self.ring_idx;
        o
    }

    /// The header of the response to this command: `ty`, with the fence
    /// fields echoed when the command was fenced.
    pub fn response(&self, ty: u32) -> Self {
        if self.flags & FLAG_FENCE != 0 {
            Self {
                ty,
                flags: self.flags & (FLAG_FENCE | FLAG_INFO_RING_IDX),
                ..*self
            }
        } else {
            Self {
                ty,
                ..Default::default()
            }
        }
    }
}

/// The little-endian u32 at `off`, if `b` is long enough.
pub fn le32(b: &[u8], off: usize) -> Option<u32> {
    let s = b.get(off..off.checked_add(4)?)?;
    Some(u32::from_le_bytes(s.try_into().ok()?))
}

/// The little-endian u64 at `off`, if `b` is long enough.
pub fn le64(b: &[u8], off: usize) -> Option<u64> {
    let s = b.get(off..off.checked_add(8)?)?;
    Some(u64::from_le_bytes(s.try_into().ok()?))
}

/// `virtio_gpu_resource_create_blob` (after the header).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CreateBlob {
    /// Resource id the guest chose.
    pub resource_id: u32,
    /// GUEST, HOST3D or HOST3D_GUEST.
    pub blob_mem: u32,
    /// MAPPABLE, SHAREABLE, CROSS_DEVICE.
    pub blob_flags: u32,
    /// Number of `virtio_gpu_mem_entry` that follow.
    pub nr_entries: u32,
    /// Host-side id (cross-domain: from GET_IMAGE_REQUIREMENTS).
    pub blob_id: u64,
    /// Size in bytes.
    pub size: u64,
}

/// Size of `virtio_gpu_resource_create_blob`.
pub const CREATE_BLOB_SIZE: usize = HDR_SIZE + 32;

impl CreateBlob {
    /// Decodes the command in `b` (header included).
    pub fn decode(b: &[u8]) -> Option<Self> {
        Some(Self {
            resource_id: le32(b, 24)?,
            blob_mem: le32(b, 28)?,
            blob_flags: le32(b, 32)?,
            nr_entries: le32(b, 36)?,
            blob_id: le64(b, 40)?,
            size: le64(b, 48)?,
        })
    }
}

/// One guest memory range of a backing (`virtio_gpu_mem_entry`).
pub fn mem_entry(b: &[u8], off: usize) -> Option<(u64, u32)> {
    Some((le64(b, off)?, le32(b, off.checked_add(8)?)?))
}
