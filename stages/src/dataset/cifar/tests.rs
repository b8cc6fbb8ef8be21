//! Both readers against archives and folders in the published layouts: the
//! binary ones written here, the pickles written by real numpy (through
//! `pickle_fixtures.py` and the project's venv).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::fixtures::{self, CifarImage, Members, FINE_LABEL_NAMES};
use super::*;
use crate::dataset::artefact::Split;

/// Deterministic bytes covering all 256 values, so pickle escapes and
/// Latin-1 round trips are exercised.
fn image(seed: u32, fine_label: u8, coarse_label: u8) -> CifarImage {
    let mut state = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    let mut chw = [0u8; IMAGE_BYTES];
    for b in &mut chw {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        *b = (state >> 24) as u8;
    }
    CifarImage {
        coarse_label,
        fine_label,
        chw,
    }
}

fn train_images() -> Vec<CifarImage> {
    vec![image(1, 99, 13), image(2, 0, 4), image(3, 42, 8)]
}

fn test_images() -> Vec<CifarImage> {
    vec![image(4, 7, 7), image(5, 99, 13)]
}

/// HWC by its definition, independent of the readers' transposition.
fn split_of(images: &[CifarImage]) -> Split {
    let mut hwc = Vec::new();
    for image in images {
        for y in 0..32 {
            for x in 0..32 {
                for c in 0..3 {
                    hwc.push(image.chw[c * 1024 + y * 32 + x]);
                }
            }
        }
    }
    Split {
        images: hwc,
        labels: images.iter().map(|i| i.fine_label.into()).collect(),
    }
}

fn expected(format: CifarFormat) -> Dataset {
    Dataset {
        source_format: format.source_format().to_string(),
        height: 32,
        width: 32,
        channels: 3,
        classes: FINE_LABEL_NAMES.iter().map(|n| n.to_string()).collect(),
        train: split_of(&train_images()),
        test: split_of(&test_images()),
    }
}

fn write_folder(dir: &Path, members: &Members) -> PathBuf {
    fs::create_dir_all(dir).unwrap();
    for (name, bytes) in members {
        fs::write(dir.join(name), bytes).unwrap();
    }
    dir.to_path_buf()
}

fn read_folder(dir: &Path) -> Members {
    ["train", "test", "meta"]
        .into_iter()
        .map(|name| (name, fs::read(dir.join(name)).unwrap()))
        .collect()
}

fn load_err(path: &Path) -> String {
    match load_cifar100(path) {
        Ok(_) => panic!("{} loaded", path.display()),
        Err(e) => e.to_string(),
    }
}

fn assert_contains(err: &str, parts: &[&str]) {
    for part in parts {
        assert!(err.contains(part), "{err:?} lacks {part:?}");
    }
}

fn python() -> Command {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
    assert!(
        venv.is_file(),
        "{} is missing: run the project set-up (a venv with numpy) before these tests",
        venv.display()
    );
    let mut cmd = Command::new(venv);
    cmd.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/dataset/cifar/pickle_fixtures.py"));
    cmd
}

fn run(mut cmd: Command) -> String {
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The raw arrays `pickle_fixtures.py` pickles.
fn write_raw(dir: &Path) {
    fs::create_dir_all(dir).unwrap();
    for (split, images) in [("train", train_images()), ("test", test_images())] {
        let chw: Vec<u8> = images.iter().flat_map(|i| i.chw).collect();
        fs::write(dir.join(format!("{split}.chw")), chw).unwrap();
        let fine: Vec<u8> = images.iter().map(|i| i.fine_label).collect();
        fs::write(dir.join(format!("{split}.fine")), fine).unwrap();
        let coarse: Vec<u8> = images.iter().map(|i| i.coarse_label).collect();
        fs::write(dir.join(format!("{split}.coarse")), coarse).unwrap();
    }
    for (name, bytes) in fixtures::binary_members(&[], &[]) {
        if name.ends_with(".txt") {
            fs::write(dir.join(name), bytes).unwrap();
        }
    }
}

/// `train`, `test` and `meta` pickled by numpy into `dir/cifar-100-python`.
fn numpy_pickles(dir: &Path, style: &str, protocol: u8, defect: &str) -> PathBuf {
    let raw = dir.join("raw");
    write_raw(&raw);
    let out = dir.join("cifar-100-python");
    let mut cmd = python();
    cmd.args(["write", style, &protocol.to_string(), defect])
        .arg(&raw)
        .arg(&out);
    run(cmd);
    out
}

fn binary_archive(dir: &Path, members: &Members) -> PathBuf {
    let path = dir.join("cifar-100-binary.tar.gz");
    fixtures::write_archive(&path, CifarFormat::Binary, members).unwrap();
    path
}

fn python_archive(dir: &Path, members: &Members) -> PathBuf {
    let path = dir.join("cifar-100-python.tar.gz");
    fixtures::write_archive(&path, CifarFormat::Python, members).unwrap();
    path
}

#[test]
fn numpy_written_python_archive_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let pickles = numpy_pickles(dir.path(), "py2", 2, "none");
    let archive = python_archive(dir.path(), &read_folder(&pickles));
    assert_eq!(detect(&archive).unwrap(), Some(CifarFormat::Python));
    assert_eq!(
        load_cifar100(&archive).unwrap(),
        expected(CifarFormat::Python)
    );
}

#[test]
fn extracted_python_folder_round_trips_from_either_level() {
    let dir = tempfile::tempdir().unwrap();
    let pickles = numpy_pickles(dir.path(), "py2", 2, "none");
    for path in [dir.path(), &pickles] {
        assert_eq!(detect(path).unwrap(), Some(CifarFormat::Python));
        assert_eq!(load_cifar100(path).unwrap(), expected(CifarFormat::Python));
    }
}

#[test]
fn every_protocol_of_python_2_and_3_reads_the_same() {
    for style in ["py2", "py3"] {
        for protocol in 0..=2 {
            let dir = tempfile::tempdir().unwrap();
            let pickles = numpy_pickles(dir.path(), style, protocol, "none");
            let got = load_cifar100(&pickles)
                .unwrap_or_else(|e| panic!("{style} protocol {protocol}: {e}"));
            assert_eq!(
                got,
                expected(CifarFormat::Python),
                "{style} protocol {protocol}"
            );
        }
    }
}

#[test]
fn python_fixture_archive_is_what_numpy_reads_and_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("raw");
    write_raw(&raw);
    let pickles = write_folder(
        &dir.path().join("pickles"),
        &fixtures::python_members(&train_images(), &test_images()),
    );
    let mut cmd = python();
    cmd.arg("check").arg(&raw).arg(&pickles);
    assert!(run(cmd).contains("numpy reads the pickles"));

    let archive = dir.path().join("cifar-100-python.tar.gz");
    fixtures::write_cifar100_python_archive(&archive, &train_images(), &test_images()).unwrap();
    assert_eq!(
        load_cifar100(&archive).unwrap(),
        expected(CifarFormat::Python)
    );
}

#[test]
fn binary_archive_and_folder_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("cifar-100-binary.tar.gz");
    fixtures::write_cifar100_binary_archive(&archive, &train_images(), &test_images()).unwrap();
    assert_eq!(detect(&archive).unwrap(), Some(CifarFormat::Binary));
    assert_eq!(
        load_cifar100(&archive).unwrap(),
        expected(CifarFormat::Binary)
    );

    let members = fixtures::binary_members(&train_images(), &test_images());
    let folder = write_folder(&dir.path().join("x/cifar-100-binary"), &members);
    for path in [folder.parent().unwrap(), &folder] {
        assert_eq!(detect(path).unwrap(), Some(CifarFormat::Binary));
        assert_eq!(load_cifar100(path).unwrap(), expected(CifarFormat::Binary));
    }
}

#[test]
fn other_inputs_are_not_detected() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(detect(dir.path()).unwrap(), None);
    let text = dir.path().join("notes.txt");
    fs::write(&text, "not an archive").unwrap();
    assert_eq!(detect(&text).unwrap(), None);
    let other = dir.path().join("other.tar.gz");
    let mut tar = tar::Builder::new(flate2::write::GzEncoder::new(
        File::create(&other).unwrap(),
        flate2::Compression::fast(),
    ));
    let mut header = tar::Header::new_gnu();
    header.set_size(1);
    tar.append_data(&mut header, "cifar-10-batches-py/readme.html", &b"x"[..])
        .unwrap();
    tar.into_inner().unwrap().finish().unwrap();
    assert_eq!(detect(&other).unwrap(), None);
    assert_contains(
        &load_err(&other),
        &["other.tar.gz", "is not a CIFAR-100 source"],
    );

    fs::create_dir(dir.path().join("cifar-100-python")).unwrap();
    fs::create_dir(dir.path().join("cifar-100-binary")).unwrap();
    let err = detect(dir.path()).unwrap_err().to_string();
    assert_contains(&err, &["holds both cifar-100-python and cifar-100-binary"]);
}

#[test]
fn truncated_archives_are_errors_not_short_datasets() {
    let dir = tempfile::tempdir().unwrap();
    let members = fixtures::binary_members(&train_images(), &test_images());
    let archive = binary_archive(dir.path(), &members);
    let full = fs::read(&archive).unwrap();
    // Inside the train member's data, then inside the gzip trailer (every
    // member complete, but the CRC cannot be checked).
    for (cut, parts) in [
        (
            full.len() * 3 / 4,
            vec!["member cifar-100-binary/train.bin: the archive is truncated"],
        ),
        (
            full.len() - 4,
            vec!["not a readable .tar.gz", "truncated or corrupted"],
        ),
    ] {
        fs::write(&archive, &full[..cut]).unwrap();
        assert_contains(&load_err(&archive), &[&archive.display().to_string()]);
        assert_contains(&load_err(&archive), &parts);
    }
}

#[test]
fn corrupted_archives_are_errors_wherever_the_damage_is() {
    let dir = tempfile::tempdir().unwrap();
    let pickles = fixtures::python_members(&train_images(), &test_images());
    let archive = python_archive(dir.path(), &pickles);
    let bytes = fs::read(&archive).unwrap();
    // In the gzip header, early in the deflate data (where a flip decodes
    // to a plausible but wrong pickle), midway, and in the CRC trailer.
    for at in [20, 200, bytes.len() / 2, bytes.len() - 6] {
        let mut damaged = bytes.clone();
        damaged[at] ^= 0x55;
        fs::write(&archive, damaged).unwrap();
        let err = load_err(&archive);
        assert_contains(&err, &["cifar-100-python.tar.gz", "truncated or corrupted"]);
    }
}

#[test]
fn missing_members_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let mut members = fixtures::python_members(&train_images(), &test_images());
    members.retain(|(name, _)| *name != "meta");
    let archive = python_archive(dir.path(), &members);
    assert_contains(
        &load_err(&archive),
        &["has no member cifar-100-python/meta", "train, test, meta"],
    );
    let folder = write_folder(&dir.path().join("cifar-100-python"), &members);
    assert_contains(&load_err(&folder), &["has no file meta"]);

    let mut members = fixtures::binary_members(&train_images(), &test_images());
    members.retain(|(name, _)| *name != "test.bin");
    let archive = binary_archive(dir.path(), &members);
    assert_contains(
        &load_err(&archive),
        &["has no member cifar-100-binary/test.bin"],
    );
}

#[test]
fn binary_records_must_be_whole() {
    let dir = tempfile::tempdir().unwrap();
    let mut members = fixtures::binary_members(&train_images(), &test_images());
    members
        .iter_mut()
        .find(|(n, _)| *n == "train.bin")
        .unwrap()
        .1
        .push(0);
    let archive = binary_archive(dir.path(), &members);
    assert_contains(
        &load_err(&archive),
        &[
            "member cifar-100-binary/train.bin",
            "holds 9223 bytes",
            "3074-byte records",
        ],
    );
}

#[test]
fn binary_fine_label_out_of_range_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let mut test = test_images();
    test[1].fine_label = 100;
    let archive = dir.path().join("cifar-100-binary.tar.gz");
    fixtures::write_cifar100_binary_archive(&archive, &train_images(), &test).unwrap();
    assert_contains(
        &load_err(&archive),
        &[
            "member cifar-100-binary/test.bin",
            "record 1: fine label is 100",
            "0..=99",
        ],
    );
}

#[test]
fn binary_class_names_must_number_100() {
    let dir = tempfile::tempdir().unwrap();
    let mut members = fixtures::binary_members(&train_images(), &test_images());
    let names = &mut members
        .iter_mut()
        .find(|(n, _)| *n == "fine_label_names.txt")
        .unwrap()
        .1;
    names.truncate(names.len() - "worm\n".len());
    let folder = write_folder(&dir.path().join("cifar-100-binary"), &members);
    let err = load_err(&folder);
    assert_contains(
        &err,
        &["fine_label_names.txt", "holds 99 names; expected 100"],
    );
}

#[test]
fn python_pickles_of_the_wrong_shape_are_named() {
    for (defect, parts) in [
        (
            "shape",
            &["b'data' has shape [3, 3, 1024]; expected (N, 3072)"][..],
        ),
        ("width", &["b'data' has shape [3, 3071]"]),
        ("dtype", &["b'data' has dtype \"i2\"; expected uint8"]),
        ("count", &["b'fine_labels' holds 2 labels for the 3 images"]),
        ("range", &["b'fine_labels'[0] is 100; expected 0..=99"]),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let pickles = numpy_pickles(dir.path(), "py2", 2, defect);
        let archive = python_archive(dir.path(), &read_folder(&pickles));
        let err = load_err(&archive);
        assert_contains(
            &err,
            &["cifar-100-python.tar.gz", "member cifar-100-python/train"],
        );
        assert_contains(&err, parts);
    }
}

#[test]
fn pickle_naming_a_foreign_global_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut members = fixtures::python_members(&train_images(), &test_images());
    members[1].1 = b"\x80\x02cposix\nsystem\nU\x02ls\x85R.".to_vec();
    let folder = write_folder(&dir.path().join("cifar-100-python"), &members);
    assert_contains(
        &load_err(&folder),
        &[
            "cifar-100-python/test",
            "byte 2: global posix.system is not allowed",
        ],
    );
}
