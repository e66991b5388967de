//! The on-disk layout: page headers, leaf and branch elements, bucket headers, the meta page.
//! Every integer is little-endian (bbolt writes the machine's order; etcd runs on little-endian
//! machines, and bbolt files do not move between byte orders).

use crate::{BoltError, Result};

/// Bytes of a page header: id u64, flags u16, count u16, overflow u32.
pub const PAGE_HEADER: usize = 16;
/// Bytes of a leaf element (flags, pos, ksize, vsize: u32 each) or a branch element (pos u32,
/// ksize u32, pgid u64).
pub const ELEMENT: usize = 16;
/// Bytes of a bucket header (root pgid u64, sequence u64).
pub const BUCKET_HEADER: usize = 16;

pub const BRANCH: u16 = 0x01;
pub const LEAF: u16 = 0x02;
pub const META: u16 = 0x04;
/// A leaf element whose value is a bucket header.
pub const BUCKET_LEAF: u32 = 0x01;

/// The meta's freelist page when the freelist is not kept in the file (etcd's NoFreelistSync).
pub const NO_FREELIST: u64 = u64::MAX;

pub const MAGIC: u32 = 0xED0C_DAED;
pub const VERSION: u32 = 2;
/// Bytes of the meta fields covered by the checksum (magic through txid).
pub const META_CHECKED: usize = 56;

pub fn put_u16(buf: &mut [u8], at: usize, v: u16) {
    buf[at..at + 2].copy_from_slice(&v.to_le_bytes());
}
pub fn put_u32(buf: &mut [u8], at: usize, v: u32) {
    buf[at..at + 4].copy_from_slice(&v.to_le_bytes());
}
pub fn put_u64(buf: &mut [u8], at: usize, v: u64) {
    buf[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// Reads little-endian integers with bounds checks: a damaged file is an error.
pub fn get_u16(buf: &[u8], at: usize) -> Result<u16> {
    Ok(u16::from_le_bytes(
        slice(buf, at, 2)?.try_into().expect("2 bytes"),
    ))
}
pub fn get_u32(buf: &[u8], at: usize) -> Result<u32> {
    Ok(u32::from_le_bytes(
        slice(buf, at, 4)?.try_into().expect("4 bytes"),
    ))
}
pub fn get_u64(buf: &[u8], at: usize) -> Result<u64> {
    Ok(u64::from_le_bytes(
        slice(buf, at, 8)?.try_into().expect("8 bytes"),
    ))
}

/// `len` bytes of `buf` from `at`, or an error if they are not all there.
pub fn slice(buf: &[u8], at: usize, len: usize) -> Result<&[u8]> {
    at.checked_add(len)
        .and_then(|end| buf.get(at..end))
        .ok_or_else(|| BoltError::Invalid(format!("{len} bytes at {at} past the end of a page")))
}

/// A page header's fields.
#[derive(Clone, Copy, Debug)]
pub struct Header {
    pub id: u64,
    pub flags: u16,
    pub count: u16,
    pub overflow: u32,
}

impl Header {
    pub fn write(&self, page: &mut [u8]) {
        put_u64(page, 0, self.id);
        put_u16(page, 8, self.flags);
        put_u16(page, 10, self.count);
        put_u32(page, 12, self.overflow);
    }

    pub fn read(page: &[u8]) -> Result<Header> {
        Ok(Header {
            id: get_u64(page, 0)?,
            flags: get_u16(page, 8)?,
            count: get_u16(page, 10)?,
            overflow: get_u32(page, 12)?,
        })
    }
}

/// FNV-1a, 64 bits: the meta page's checksum.
pub fn fnv64a(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in data {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The meta page's fields (after the page header).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Meta {
    pub page_size: u32,
    pub flags: u32,
    /// The root bucket's page.
    pub root: u64,
    pub sequence: u64,
    pub freelist: u64,
    /// The high-water mark: pages below it exist in the file.
    pub pgid: u64,
    pub txid: u64,
}

impl Meta {
    /// The meta page `id` (0 or 1), `page_size` bytes.
    pub fn page(&self, id: u64, page_size: usize) -> Vec<u8> {
        let mut page = vec![0u8; page_size];
        Header {
            id,
            flags: META,
            count: 0,
            overflow: 0,
        }
        .write(&mut page);
        let m = &mut page[PAGE_HEADER..];
        put_u32(m, 0, MAGIC);
        put_u32(m, 4, VERSION);
        put_u32(m, 8, self.page_size);
        put_u32(m, 12, self.flags);
        put_u64(m, 16, self.root);
        put_u64(m, 24, self.sequence);
        put_u64(m, 32, self.freelist);
        put_u64(m, 40, self.pgid);
        put_u64(m, 48, self.txid);
        let sum = fnv64a(&m[..META_CHECKED]);
        put_u64(m, META_CHECKED, sum);
        page
    }

    /// The meta in a meta page, validated as bbolt validates it.
    pub fn read(page: &[u8]) -> Result<Meta> {
        let m = slice(page, PAGE_HEADER, META_CHECKED + 8)?;
        if get_u32(m, 0)? != MAGIC {
            return Err(BoltError::Invalid("invalid magic".into()));
        }
        if get_u32(m, 4)? != VERSION {
            return Err(BoltError::Invalid("version mismatch".into()));
        }
        if get_u64(m, META_CHECKED)? != fnv64a(&m[..META_CHECKED]) {
            return Err(BoltError::Invalid("checksum error".into()));
        }
        Ok(Meta {
            page_size: get_u32(m, 8)?,
            flags: get_u32(m, 12)?,
            root: get_u64(m, 16)?,
            sequence: get_u64(m, 24)?,
            freelist: get_u64(m, 32)?,
            pgid: get_u64(m, 40)?,
            txid: get_u64(m, 48)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv64a_matches_the_reference_values() {
        assert_eq!(fnv64a(b""), 0xcbf29ce484222325);
        assert_eq!(fnv64a(b"a"), 0xaf63dc4c8601ec8c);
    }

    #[test]
    fn a_meta_page_round_trips_and_damage_is_caught() {
        let meta = Meta {
            page_size: 4096,
            flags: 0,
            root: 3,
            sequence: 0,
            freelist: 2,
            pgid: 4,
            txid: 1,
        };
        let mut page = meta.page(1, 4096);
        assert_eq!(Meta::read(&page).unwrap(), meta);
        page[PAGE_HEADER + 20] ^= 1;
        assert!(Meta::read(&page)
            .unwrap_err()
            .to_string()
            .contains("checksum"));
    }
}
