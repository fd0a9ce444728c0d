//! The CLI's `dataset` commands: create a dataset folder, or describe one.

use super::DatasetCommand;
use crate::data::create::{self, CreateOptions};
use crate::data::dataset::{Check, Dataset};
use anyhow::{bail, Result};

pub fn run(cmd: DatasetCommand) -> Result<()> {
    match cmd {
        DatasetCommand::Info { dir } => {
            let ds = Dataset::open(&dir, Check::Full)?;
            out!("{}", ds.summary());
            Ok(())
        }
        DatasetCommand::Create(a) => {
            let opts = CreateOptions { test_percent: a.test_percent, max_side: a.max_side };
            let report = match (&a.gray2color, &a.domains) {
                (Some(photos), None) => create::gray2color(&a.datasets, &a.name, photos, a.paired, &opts)?,
                (None, Some(dirs)) => {
                    if a.names.len() != 2 || a.channels.len() != 2 {
                        bail!("--names and --channels take two values each, e.g. --names photo,painting --channels 3,3");
                    }
                    create::from_domains(
                        &a.datasets,
                        &a.name,
                        [&dirs[0], &dirs[1]],
                        [&a.names[0], &a.names[1]],
                        [a.channels[0], a.channels[1]],
                        &opts,
                    )?
                }
                _ => bail!("give --gray2color PHOTOS_DIR or --domains DIR_A DIR_B"),
            };
            outln!("{}", report.summary());
            Ok(())
        }
    }
}
