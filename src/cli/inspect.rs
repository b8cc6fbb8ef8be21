//! `order show` and `dataset inspect`: their flags into an
//! [`ops::inspect`] query, its answer printed.

use std::path::Path;

use bsce_pipe::ops::inspect::{self, OrderAnswer, OrderFlags, OrderQuery};
use bsce_pipe::ops::Ctx;
use bsce_pipe::Result;

use crate::cli::args::OrderCommand;

pub fn order(command: OrderCommand, ctx: &Ctx) -> Result<()> {
    let OrderCommand::Show(a) = command;
    let query = OrderQuery::from_flags(OrderFlags {
        name: a.name,
        numpy_seed: a.numpy_seed,
        icarl_seed: a.icarl_seed,
        classes: a.classes,
        config: a.config,
        entry: a.entry,
        list: a.list,
    })?;
    match inspect::order(query, ctx)? {
        OrderAnswer::List(orders) => {
            for o in orders {
                out!("{:<22} {} classes  {}", o.name, o.classes, o.description);
            }
        }
        OrderAnswer::Classes(order) => out!("{}", serde_json::to_string(&order)?),
    }
    Ok(())
}

pub fn dataset(path: &Path, json: bool) -> Result<()> {
    let r = inspect::dataset(path)?;
    if json {
        out!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(());
    }
    out!("path:     {}", path.display());
    out!("format:   {}", r.format);
    out!("digest:   sha256:{}", r.digest);
    out!("classes:  {}", r.classes);
    if let Some(size) = &r.image_size {
        out!("images:   {size}");
    }
    out!("train:    {} images", r.train);
    out!("test:     {} images", r.test);
    let shown: Vec<&str> = r.class_names.iter().take(8).map(String::as_str).collect();
    let more = if r.class_names.len() > 8 {
        format!(", ... ({} more)", r.class_names.len() - 8)
    } else {
        String::new()
    };
    out!("names:    {}{more}", shown.join(", "));
    Ok(())
}
