//! Frames in and out of the store: every frame is written as Parquet (what
//! the next stage reads, typed) and CSV (what a person or a script reads).

use std::path::Path;

use bsce_stages::{Result, StageError};
use polars::prelude::*;

pub fn polars_error(what: &str, e: PolarsError) -> StageError {
    StageError::Other(format!("{what}: {e}"))
}

/// Writes `df` to `<dir>/<parquet>` and `<dir>/<csv>`.
pub fn write_frame(dir: &Path, df: &mut DataFrame, parquet: &str, csv: &str) -> Result<()> {
    let path = dir.join(parquet);
    let file = std::fs::File::create(&path).map_err(|e| StageError::io(&path, e))?;
    ParquetWriter::new(file)
        .finish(df)
        .map_err(|e| polars_error(&path.display().to_string(), e))?;
    let path = dir.join(csv);
    let mut file = std::fs::File::create(&path).map_err(|e| StageError::io(&path, e))?;
    CsvWriter::new(&mut file)
        .include_header(true)
        .finish(df)
        .map_err(|e| polars_error(&path.display().to_string(), e))?;
    Ok(())
}

pub fn read_parquet(path: &Path) -> Result<DataFrame> {
    let file = std::fs::File::open(path).map_err(|e| StageError::io(path, e))?;
    ParquetReader::new(file)
        .finish()
        .map_err(|e| StageError::invalid(path, format!("not a readable Parquet frame: {e}")))
}

/// Column `name` of `df`, cast to `dtype` when given; errors name the column.
fn column(df: &DataFrame, name: &str, dtype: Option<&DataType>) -> Result<Column> {
    let fail = |e| polars_error(&format!("column {name}"), e);
    let c = df.column(name).map_err(fail)?;
    match dtype {
        Some(t) => c.cast(t).map_err(fail),
        None => Ok(c.clone()),
    }
}

/// The string column `name` as owned values (a null reads as "").
pub fn strings(df: &DataFrame, name: &str) -> Result<Vec<String>> {
    let c = column(df, name, None)?;
    let s = c
        .str()
        .map_err(|e| polars_error(&format!("column {name}"), e))?;
    Ok((0..s.len())
        .map(|i| s.get(i).unwrap_or("").to_string())
        .collect())
}

/// The float column `name` (nulls kept).
pub fn floats(df: &DataFrame, name: &str) -> Result<Vec<Option<f64>>> {
    let c = column(df, name, Some(&DataType::Float64))?;
    let s = c
        .f64()
        .map_err(|e| polars_error(&format!("column {name}"), e))?;
    Ok((0..s.len()).map(|i| s.get(i)).collect())
}

/// The integer column `name` (nulls read as 0).
pub fn ints(df: &DataFrame, name: &str) -> Result<Vec<i64>> {
    let c = column(df, name, Some(&DataType::Int64))?;
    let s = c
        .i64()
        .map_err(|e| polars_error(&format!("column {name}"), e))?;
    Ok((0..s.len()).map(|i| s.get(i).unwrap_or(0)).collect())
}

pub fn bools(df: &DataFrame, name: &str) -> Result<Vec<bool>> {
    let c = column(df, name, None)?;
    let s = c
        .bool()
        .map_err(|e| polars_error(&format!("column {name}"), e))?;
    Ok((0..s.len()).map(|i| s.get(i).unwrap_or(false)).collect())
}
