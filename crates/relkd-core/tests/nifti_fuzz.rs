//! A bounded fuzz test of the NIfTI reader: random header fields (dims, datatype, bitpix,
//! vox_offset, pixdim, scl_slope/inter, magic, header size) and truncations of a valid file must
//! never panic, and never make the reader allocate more than a small multiple of the bytes it
//! read (a header claiming a huge volume over a few bytes of data is an error, not an
//! allocation). Seeded, a few seconds.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use relkd_core::nifti_io::{new_header, read_volume, write_volume};

/// The system allocator, counting the bytes live and their peak.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(live, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Header fields as (byte offset, width in bytes).
const FIELDS: [(usize, usize); 14] = [
    (0, 4),   // sizeof_hdr
    (40, 2),  // dim[0]
    (42, 2),  // dim[1]
    (44, 2),  // dim[2]
    (46, 2),  // dim[3]
    (48, 2),  // dim[4]
    (70, 2),  // datatype
    (72, 2),  // bitpix
    (80, 4),  // pixdim[1]
    (88, 4),  // pixdim[3]
    (108, 4), // vox_offset
    (112, 4), // scl_slope
    (116, 4), // scl_inter
    (344, 4), // magic
];

fn mutate(bytes: &mut Vec<u8>, rng: &mut ChaCha8Rng) {
    for _ in 0..rng.random_range(1..=3) {
        if rng.random_bool(0.25) {
            let keep = rng.random_range(0..bytes.len());
            bytes.truncate(keep);
            continue;
        }
        let (at, width) = FIELDS[rng.random_range(0..FIELDS.len())];
        if at + width > bytes.len() {
            continue;
        }
        let extreme: [u8; 4] = match rng.random_range(0..6) {
            0 => [0; 4],
            1 => [0xff; 4],
            2 => i16::MAX.to_le_bytes().repeat(2).try_into().unwrap(),
            3 => f32::NAN.to_le_bytes(),
            4 => 1e30f32.to_le_bytes(),
            _ => rng.random(),
        };
        bytes[at..at + width].copy_from_slice(&extreme[..width]);
    }
}

#[test]
fn random_headers_and_truncations_never_panic_or_overallocate() {
    let dir = tempfile::tempdir().unwrap();
    let valid = dir.path().join("valid.nii");
    let dims = [8, 8, 4];
    let data: Vec<i16> = (0..256).map(|i| (i * 7 % 300) as i16).collect();
    let affine = [[0.5, 0.0, 0.0, 0.0], [0.0, 0.5, 0.0, 0.0], [0.0, 0.0, 3.0, 0.0], [0.0, 0.0, 0.0, 1.0]];
    write_volume(&valid, &data, dims, &new_header([0.5, 0.5, 3.0], &affine)).unwrap();
    let original = std::fs::read(&valid).unwrap();
    assert_eq!(read_volume(&valid).unwrap().dims, dims);

    let mut rng = ChaCha8Rng::seed_from_u64(15);
    let path = dir.path().join("fuzz.nii");
    let (mut errors, mut read) = (0, 0);
    for case in 0..3000 {
        let mut bytes = original.clone();
        mutate(&mut bytes, &mut rng);
        std::fs::write(&path, &bytes).unwrap();
        let before = LIVE.load(Ordering::Relaxed);
        PEAK.store(before, Ordering::Relaxed);
        let result = std::panic::catch_unwind(|| read_volume(&path).map(|v| v.data.len()));
        let peak = PEAK.load(Ordering::Relaxed) - before;
        let outcome = result.unwrap_or_else(|_| panic!("case {case}: the reader panicked on {bytes:?}"));
        // The file, its decoded voxels as f32 (4 bytes for each byte at worst) and the reader's
        // copies of them: a generous but bounded multiple.
        let bound = 64 * bytes.len() + (1 << 16);
        assert!(peak <= bound, "case {case}: {peak} bytes allocated for a {}-byte file ({outcome:?})", bytes.len());
        match outcome {
            Ok(_) => read += 1,
            Err(_) => errors += 1,
        }
    }
    // The mutations reach both outcomes.
    assert!(read > 100 && errors > 1000, "{read} read, {errors} errors");
}
