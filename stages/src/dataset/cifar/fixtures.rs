//! Small CIFAR-100 archives in the official layouts, for the tests here and
//! the end-to-end tests. The images are the caller's; the member paths,
//! record layout, pickle encoding and class names are the published ones.

use std::fs::File;
use std::io;
use std::path::Path;

use flate2::write::GzEncoder;
use flate2::Compression;

use super::{CifarFormat, IMAGE_BYTES};

/// The fine class names in label order, as in `meta` and
/// `fine_label_names.txt`.
#[rustfmt::skip]
pub const FINE_LABEL_NAMES: [&str; 100] = [
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle",
    "bottle", "bowl", "boy", "bridge", "bus", "butterfly", "camel", "can", "castle",
    "caterpillar", "cattle", "chair", "chimpanzee", "clock", "cloud", "cockroach", "couch",
    "crab", "crocodile", "cup", "dinosaur", "dolphin", "elephant", "flatfish", "forest", "fox",
    "girl", "hamster", "house", "kangaroo", "keyboard", "lamp", "lawn_mower", "leopard", "lion",
    "lizard", "lobster", "man", "maple_tree", "motorcycle", "mountain", "mouse", "mushroom",
    "oak_tree", "orange", "orchid", "otter", "palm_tree", "pear", "pickup_truck", "pine_tree",
    "plain", "plate", "poppy", "porcupine", "possum", "rabbit", "raccoon", "ray", "road",
    "rocket", "rose", "sea", "seal", "shark", "shrew", "skunk", "skyscraper", "snail", "snake",
    "spider", "squirrel", "streetcar", "sunflower", "sweet_pepper", "table", "tank",
    "telephone", "television", "tiger", "tractor", "train", "trout", "tulip", "turtle",
    "wardrobe", "whale", "willow_tree", "wolf", "woman", "worm",
];

/// The coarse (superclass) names in label order.
#[rustfmt::skip]
pub const COARSE_LABEL_NAMES: [&str; 20] = [
    "aquatic_mammals", "fish", "flowers", "food_containers", "fruit_and_vegetables",
    "household_electrical_devices", "household_furniture", "insects", "large_carnivores",
    "large_man-made_outdoor_things", "large_natural_outdoor_scenes",
    "large_omnivores_and_herbivores", "medium_mammals", "non-insect_invertebrates", "people",
    "reptiles", "small_mammals", "trees", "vehicles_1", "vehicles_2",
];

/// One image as both official formats store it. Labels are written as
/// given, so a test can also write out-of-range ones.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CifarImage {
    pub coarse_label: u8,
    pub fine_label: u8,
    /// Channel-major 3x32x32: 1024 red, 1024 green, then 1024 blue bytes,
    /// each plane row by row from the top left.
    pub chw: [u8; IMAGE_BYTES],
}

/// Writes `cifar-100-binary.tar.gz` as published: a `cifar-100-binary/`
/// folder holding `coarse_label_names.txt` and `fine_label_names.txt` (one
/// name per line), `test.bin` and `train.bin` (3074-byte records: coarse
/// label, fine label, CHW image).
pub fn write_cifar100_binary_archive(
    path: &Path,
    train: &[CifarImage],
    test: &[CifarImage],
) -> io::Result<()> {
    write_archive(path, CifarFormat::Binary, &binary_members(train, test))
}

/// Writes `cifar-100-python.tar.gz` as published: a `cifar-100-python/`
/// folder holding `train`, `test` and `meta`, pickled as Python 2's cPickle
/// wrote them (protocol 2, strings as BINSTRING, the data a uint8 numpy
/// array rebuilt by `numpy.core.multiarray._reconstruct`).
pub fn write_cifar100_python_archive(
    path: &Path,
    train: &[CifarImage],
    test: &[CifarImage],
) -> io::Result<()> {
    write_archive(path, CifarFormat::Python, &python_members(train, test))
}

pub(super) type Members = Vec<(&'static str, Vec<u8>)>;

pub(super) fn binary_members(train: &[CifarImage], test: &[CifarImage]) -> Members {
    let records = |images: &[CifarImage]| {
        let mut out = Vec::with_capacity(images.len() * (2 + IMAGE_BYTES));
        for image in images {
            out.extend_from_slice(&[image.coarse_label, image.fine_label]);
            out.extend_from_slice(&image.chw);
        }
        out
    };
    vec![
        ("coarse_label_names.txt", name_lines(&COARSE_LABEL_NAMES)),
        ("fine_label_names.txt", name_lines(&FINE_LABEL_NAMES)),
        ("test.bin", records(test)),
        ("train.bin", records(train)),
    ]
}

pub(super) fn python_members(train: &[CifarImage], test: &[CifarImage]) -> Members {
    let meta = pickle_dict(&[
        (
            "fine_label_names",
            Field::Strings(names_bytes(&FINE_LABEL_NAMES)),
        ),
        (
            "coarse_label_names",
            Field::Strings(names_bytes(&COARSE_LABEL_NAMES)),
        ),
    ]);
    vec![
        ("train", split_pickle(b"training batch 1 of 1", train)),
        ("test", split_pickle(b"testing batch 1 of 1", test)),
        ("meta", meta),
    ]
}

/// The file name a split pickle lists for its `index`th image.
pub(super) fn image_file_name(image: &CifarImage, index: usize) -> String {
    let class = FINE_LABEL_NAMES
        .get(usize::from(image.fine_label))
        .unwrap_or(&"image");
    format!("{class}_s_{index:06}.png")
}

pub(super) fn write_archive(path: &Path, format: CifarFormat, members: &Members) -> io::Result<()> {
    let root = format.root_folder();
    let mut tar = tar::Builder::new(GzEncoder::new(File::create(path)?, Compression::default()));
    let mut dir = tar::Header::new_gnu();
    dir.set_entry_type(tar::EntryType::Directory);
    dir.set_mode(0o755);
    dir.set_size(0);
    tar.append_data(&mut dir, format!("{root}/"), io::empty())?;
    for (name, bytes) in members {
        let mut header = tar::Header::new_gnu();
        header.set_mode(0o644);
        header.set_size(bytes.len() as u64);
        tar.append_data(&mut header, format!("{root}/{name}"), &bytes[..])?;
    }
    tar.into_inner()?.finish()?.sync_all()
}

fn name_lines(names: &[&str]) -> Vec<u8> {
    names
        .iter()
        .flat_map(|n| [n.as_bytes(), b"\n"])
        .flatten()
        .copied()
        .collect()
}

fn names_bytes(names: &[&str]) -> Vec<Vec<u8>> {
    names.iter().map(|n| n.as_bytes().to_vec()).collect()
}

fn split_pickle(batch_label: &[u8], images: &[CifarImage]) -> Vec<u8> {
    let data: Vec<u8> = images.iter().flat_map(|i| i.chw).collect();
    // The key order Python 2 stored the official dicts in.
    pickle_dict(&[
        (
            "filenames",
            Field::Strings(
                images
                    .iter()
                    .enumerate()
                    .map(|(i, image)| image_file_name(image, i).into_bytes())
                    .collect(),
            ),
        ),
        ("batch_label", Field::String(batch_label.to_vec())),
        (
            "fine_labels",
            Field::Ints(images.iter().map(|i| i.fine_label.into()).collect()),
        ),
        (
            "coarse_labels",
            Field::Ints(images.iter().map(|i| i.coarse_label.into()).collect()),
        ),
        (
            "data",
            Field::Uint8Rows {
                rows: images.len(),
                data,
            },
        ),
    ])
}

enum Field {
    String(Vec<u8>),
    Strings(Vec<Vec<u8>>),
    Ints(Vec<u32>),
    Uint8Rows { rows: usize, data: Vec<u8> },
}

/// A protocol 2 pickle of a dict with byte-string keys, in cPickle's
/// opcodes without its memo entries (nothing in these dicts repeats).
fn pickle_dict(fields: &[(&str, Field)]) -> Vec<u8> {
    let mut p = vec![0x80, 2, b'}', b'('];
    for (key, value) in fields {
        put_str(&mut p, key.as_bytes());
        match value {
            Field::String(s) => put_str(&mut p, s),
            Field::Strings(items) => put_list(&mut p, items, |p, s| put_str(p, s)),
            Field::Ints(items) => put_list(&mut p, items, |p, &v| put_int(p, v)),
            Field::Uint8Rows { rows, data } => put_uint8_rows(&mut p, *rows, data),
        }
    }
    p.extend_from_slice(b"u.");
    p
}

fn put_str(p: &mut Vec<u8>, s: &[u8]) {
    match u8::try_from(s.len()) {
        Ok(n) => p.extend_from_slice(&[b'U', n]),
        Err(_) => {
            p.push(b'T');
            p.extend_from_slice(&(s.len() as u32).to_le_bytes());
        }
    }
    p.extend_from_slice(s);
}

fn put_int(p: &mut Vec<u8>, v: u32) {
    match (u8::try_from(v), u16::try_from(v)) {
        (Ok(b), _) => p.extend_from_slice(&[b'K', b]),
        (_, Ok(w)) => {
            p.push(b'M');
            p.extend_from_slice(&w.to_le_bytes());
        }
        _ => {
            p.push(b'J');
            p.extend_from_slice(&v.to_le_bytes());
        }
    }
}

/// An empty list, then APPENDS in batches of 1000 as cPickle writes them.
fn put_list<T>(p: &mut Vec<u8>, items: &[T], mut put: impl FnMut(&mut Vec<u8>, &T)) {
    p.push(b']');
    for batch in items.chunks(1000) {
        if let [item] = batch {
            put(p, item);
            p.push(b'a');
        } else {
            p.push(b'(');
            batch.iter().for_each(|item| put(p, item));
            p.push(b'e');
        }
    }
}

/// A C-ordered uint8 array of shape (rows, 3072), as numpy reduces it.
fn put_uint8_rows(p: &mut Vec<u8>, rows: usize, data: &[u8]) {
    p.extend_from_slice(b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85");
    put_str(p, b"b");
    p.extend_from_slice(b"\x87R(K\x01");
    put_int(p, rows as u32);
    put_int(p, IMAGE_BYTES as u32);
    p.extend_from_slice(b"\x86cnumpy\ndtype\n");
    put_str(p, b"u1");
    p.extend_from_slice(b"K\x00K\x01\x87R(K\x03");
    put_str(p, b"|");
    p.extend_from_slice(b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb\x89");
    put_str(p, data);
    p.extend_from_slice(b"tb");
}
