//! Policy -> `MapImage`: what the kernel maps must hold for this policy.

use filter_common::{ACTION_DROP, Config, FLAG_MONITOR, SourceRule};

use super::schema::{Action, Mode, Policy};
use crate::image::{GroupInfo, MapImage};

impl Policy {
    pub fn compile(&self) -> MapImage {
        let mut config = Config::empty();
        if self.mode == Mode::Monitor {
            config.flags |= FLAG_MONITOR;
        }
        config.action = match self.action {
            Action::Drop => ACTION_DROP,
        };
        for &port in &self.ports {
            config.set_port(port);
        }
        let mut image = MapImage::new(config);
        for (id, group) in (1u32..).zip(&self.groups) {
            image.groups.push(GroupInfo {
                name: group.name.clone(),
                smtp: group.smtp,
            });
            let rule = SourceRule {
                group: id,
                smtp: group.smtp.code(),
            };
            for &prefix in &group.prefixes {
                image.insert_source(prefix, rule);
            }
        }
        image
            .set_relays(&self.relays)
            .expect("validation caps relays per family at MAX_RELAYS");
        image
    }
}
