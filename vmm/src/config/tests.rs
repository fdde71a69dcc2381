use super::*;

const M: u64 = 1 << 20;

fn flags_form() -> VmConfig {
    VmConfig {
        memory: 256 * M,
        regions: vec![
            parse_region_flag("name=video,size=64M,align=1M").unwrap(),
            parse_region_flag("name=camera,size=32M,base=0x8000000").unwrap(),
        ],
        map: parse_map_rules("video-dev=video;*=camera").unwrap(),
        ..VmConfig::default()
    }
}

fn with_regions(memory: u64, specs: &[&str]) -> VmConfig {
    VmConfig {
        memory,
        regions: specs
            .iter()
            .map(|s| parse_region_flag(s).unwrap())
            .collect(),
        ..VmConfig::default()
    }
}

fn err(c: &VmConfig) -> ConfigError {
    c.validate().expect_err("configuration was accepted")
}

#[test]
fn three_forms_give_one_configuration() {
    let flags = flags_form();
    let cmdline =
        cmdline::parse("cma=video=64M/1M;camera=32M@0x8000000 cma_map=video-dev=video;*=camera")
            .unwrap();
    let from_cmdline = VmConfig {
        memory: 256 * M,
        regions: cmdline.regions,
        map: cmdline.map,
        ..VmConfig::default()
    };
    let toml = r#"
        memory = "256M"
        cma_map = "video-dev=video;*=camera"
        [[cma]]
        name = "video"
        size = "64M"
        align = "1M"
        [[cma]]
        name = "camera"
        size = 33554432
        base = "0x8000000"
    "#;
    let from_file = file::parse(toml, "vm.toml").unwrap();
    assert_eq!(flags, from_cmdline);
    assert_eq!(flags, from_file);
    assert_eq!(flags.validate(), from_file.validate());
}

#[test]
fn example_file_matches_the_documented_flags() {
    let text = include_str!("../../../resources/vm.toml");
    let from_file = file::parse(text, "vm.toml").unwrap();
    let mut flags = flags_form();
    flags
        .regions
        .push(parse_region_flag("name=secure,size=16M,private").unwrap());
    assert_eq!(from_file, flags);
    from_file.validate().unwrap();
}

#[test]
fn placement_is_top_down_around_fixed_regions() {
    let mut c = flags_form();
    c.regions
        .push(parse_region_flag("name=secure,size=16M,private").unwrap());
    let v = c.validate().unwrap();
    let by_name = |n: &str| v.regions.iter().find(|r| r.name == n).unwrap().clone();
    assert_eq!(by_name("camera").base, 0x800_0000);
    assert_eq!(by_name("video").base, 192 * M);
    assert_eq!(by_name("secure").base, 176 * M);
    assert!(by_name("secure").private);
    assert_eq!(
        v.regions.iter().map(|r| r.id).collect::<Vec<_>>(),
        vec![0, 1, 2]
    );
}

#[test]
fn placement_respects_alignment_and_skips_the_mmio_hole() {
    let v = with_regions(4 << 30, &["name=a,size=64M,align=1G", "name=b,size=2G"])
        .validate()
        .unwrap();
    // 4 GiB of RAM: [0, 3G) and [4G, 5G). `a` goes to the top, 1G-aligned.
    assert_eq!(v.regions[0].base, 4 << 30);
    // `b` does not fit above 4G any more: it lands below the hole.
    assert_eq!(v.regions[1].base, (3u64 << 30) - (2u64 << 30));
}

#[test]
fn memory_errors() {
    let c = |m| VmConfig {
        memory: m,
        ..VmConfig::default()
    };
    assert!(matches!(err(&c(0)), ConfigError::MemoryOutOfRange(_)));
    assert!(matches!(err(&c(8 * M)), ConfigError::MemoryOutOfRange(_)));
    assert!(matches!(
        err(&c(65 << 30)),
        ConfigError::MemoryOutOfRange(_)
    ));
    assert!(matches!(
        err(&c(256 * M + 1)),
        ConfigError::MemoryNotAligned(_)
    ));
    assert!(c(16 * M).validate().is_ok());
    let bad_vcpus = VmConfig {
        vcpus: 0,
        ..VmConfig::default()
    };
    assert!(matches!(err(&bad_vcpus), ConfigError::BadVcpus(_)));
}

#[test]
fn overlapping_regions() {
    let c = with_regions(
        256 * M,
        &[
            "name=a,size=32M,base=0x8000000",
            "name=b,size=4M,base=0x9000000",
        ],
    );
    assert_eq!(err(&c), ConfigError::Overlap("a".into(), "b".into()));
    assert_eq!(err(&c).to_string(), "CMA regions 'a' and 'b' overlap");
}

#[test]
fn region_outside_memory() {
    let c = with_regions(256 * M, &["name=a,size=32M,base=0x10000000"]);
    assert!(matches!(err(&c), ConfigError::OutsideMemory { .. }));
    assert!(err(&c).to_string().contains("0x10000000"));
    let c = with_regions(256 * M, &["name=a,size=4M,base=0xffffffffffe00000"]);
    assert!(matches!(err(&c), ConfigError::OutsideMemory { .. }));
    // In the MMIO hole of a big guest.
    let c = with_regions(4 << 30, &["name=a,size=4M,base=0xC0000000"]);
    assert!(matches!(err(&c), ConfigError::OutsideMemory { .. }));
    // Over the boot area.
    let c = with_regions(256 * M, &["name=a,size=2M,base=0"]);
    assert!(matches!(err(&c), ConfigError::InBootArea { .. }));
}

#[test]
fn alignment_errors() {
    let c = with_regions(256 * M, &["name=a,size=32M,base=0x8000800"]);
    assert_eq!(
        err(&c),
        ConfigError::NotPageAligned {
            name: "a".into(),
            field: "base",
            value: "0x8000800".into()
        }
    );
    let c = with_regions(256 * M, &["name=a,size=0x2000800"]);
    assert!(matches!(
        err(&c),
        ConfigError::NotPageAligned { field: "size", .. }
    ));
    let c = with_regions(256 * M, &["name=a,size=3M"]);
    assert!(matches!(
        err(&c),
        ConfigError::NotPageblockAligned { field: "size", .. }
    ));
    let c = with_regions(256 * M, &["name=a,size=2M,base=0x8100000"]);
    assert!(matches!(
        err(&c),
        ConfigError::NotPageblockAligned { field: "base", .. }
    ));
    let c = with_regions(256 * M, &["name=a,size=32M,align=3M"]);
    assert!(matches!(err(&c), ConfigError::BadAlign { .. }));
    let c = with_regions(256 * M, &["name=a,size=32M,align=0"]);
    assert!(matches!(err(&c), ConfigError::BadAlign { .. }));
    let c = with_regions(256 * M, &["name=a,size=4M,base=0x8200000,align=4M"]);
    assert!(matches!(err(&c), ConfigError::BaseNotAligned { .. }));
}

#[test]
fn duplicate_and_bad_names() {
    let c = with_regions(256 * M, &["name=a,size=4M", "name=a,size=4M"]);
    assert_eq!(err(&c), ConfigError::DuplicateRegion("a".into()));
    let c = with_regions(256 * M, &["name=a b,size=4M"]);
    assert!(matches!(err(&c), ConfigError::BadName(_)));
    let c = with_regions(256 * M, &["name=,size=4M"]);
    assert!(matches!(err(&c), ConfigError::BadName(_)));
    let too_many: Vec<String> = (0..17).map(|i| format!("name=r{i},size=2M")).collect();
    let refs: Vec<&str> = too_many.iter().map(String::as_str).collect();
    assert!(matches!(
        err(&with_regions(1 << 30, &refs)),
        ConfigError::TooManyRegions(17)
    ));
}

#[test]
fn zero_and_absurd_sizes() {
    assert!(matches!(
        err(&with_regions(256 * M, &["name=a,size=0"])),
        ConfigError::ZeroSize(_)
    ));
    assert!(matches!(
        err(&with_regions(256 * M, &["name=a,size=1G"])),
        ConfigError::SizeTooLarge { .. }
    ));
    assert!(parse_region_flag("name=a,size=99999999999999G").is_err());
    // Fits in memory but leaves the guest nothing.
    assert!(matches!(
        err(&with_regions(256 * M, &["name=a,size=250M"])),
        ConfigError::TooLittleRam { .. }
    ));
    assert!(matches!(
        err(&with_regions(256 * M, &["name=a,size=4M,order_per_bit=17"])),
        ConfigError::BadOrderPerBit { .. }
    ));
}

#[test]
fn no_room_to_place() {
    let c = with_regions(
        256 * M,
        &["name=a,size=64M,align=128M", "name=b,size=64M,align=128M"],
    );
    assert!(matches!(err(&c), ConfigError::NoRoom { .. }));
}

#[test]
fn map_rule_errors() {
    let mut c = flags_form();
    c.map = parse_map_rules("video-dev=video;*=nosuch").unwrap();
    assert_eq!(
        err(&c).to_string(),
        "map rule '*=nosuch' names unknown CMA region 'nosuch'"
    );
    let mut c = flags_form();
    c.regions
        .push(parse_region_flag("name=secure,size=16M,private").unwrap());
    c.map = parse_map_rules("*=camera,secure").unwrap();
    assert!(matches!(err(&c), ConfigError::PrivateInDefaultRule { .. }));
    // Naming a private region for a specific device is explicit, so it is allowed.
    c.map = parse_map_rules("tee=secure;*=camera").unwrap();
    assert!(c.validate().is_ok());
    for bad in ["video", "=video", "dev=", "dev=,a", "a b=video", "dev=v v"] {
        assert!(parse_map_rules(bad).is_err(), "{bad:?} accepted");
    }
    let rules = parse_map_rules(" a,b = x,y ; *=z ;").unwrap();
    assert_eq!(rules.len(), 2);
    assert_eq!(rules[0].devices, vec!["a", "b"]);
    assert_eq!(rules[0].regions, vec!["x", "y"]);
    assert!(rules[1].matches("anything"));
    assert!(!rules[0].matches("c"));
}

#[test]
fn region_flag_syntax_errors() {
    for bad in [
        "",
        "size=4M",
        "name=a",
        "name=a,size=4M,colour=red",
        "name=a,size=4M,size=8M",
        "name=a,size",
        "name=a,size=4M,,",
        "name=a,size=4M,private=maybe",
        "name=a,size=4M,order_per_bit=x",
        "name=a,size=4M,base=zz",
    ] {
        assert!(parse_region_flag(bad).is_err(), "{bad:?} accepted");
    }
    let r = parse_region_flag("name=s,size=16M,private,order_per_bit=2").unwrap();
    assert!(r.private);
    assert_eq!(r.order_per_bit, 2);
    assert!(
        !parse_region_flag("name=s,size=16M,private=false")
            .unwrap()
            .private
    );
}

#[test]
fn cmdline_syntax_errors() {
    for bad in [
        "",
        "cma_map=*=a",
        "cma=a=4M cma=b=4M",
        "cma=a",
        "cma=a=4M@",
        "cma=a=4M/",
        "cma=a=4M/1M@0x8000000",
        "cma=a=4M bogus=1",
        "cma=a=4M cma_map=x",
    ] {
        assert!(cmdline::parse(bad).is_err(), "{bad:?} accepted");
    }
    let c = cmdline::parse("cma=a=4M@0x8000000/2M;b=2M").unwrap();
    assert_eq!(c.regions[0].base, Some(0x800_0000));
    assert_eq!(c.regions[0].align, Some(2 * M));
    assert_eq!(c.regions[1].base, None);
}

#[test]
fn file_errors() {
    assert!(matches!(
        file::parse("memory = \"256M\"\nbogus = 1", "x.toml"),
        Err(ConfigError::BadFile { .. })
    ));
    assert!(matches!(
        file::parse("[[cma]]\nname = \"a\"\nsize = \"4M\"\ncolour = 1", "x.toml"),
        Err(ConfigError::BadFile { .. })
    ));
    assert!(matches!(
        file::parse("memory = \"lots\"", "x.toml"),
        Err(ConfigError::BadNumber { .. })
    ));
    assert!(matches!(
        file::parse("memory = ", "x.toml"),
        Err(ConfigError::BadFile { .. })
    ));
    assert!(matches!(
        file::load(std::path::Path::new("/nonexistent/vm.toml")),
        Err(ConfigError::BadFile { .. })
    ));
    let e = file::parse("memory = -1", "x.toml").unwrap_err();
    assert!(
        e.to_string()
            .starts_with("invalid configuration file x.toml")
    );
}

#[test]
fn every_error_is_one_line() {
    let cases = [
        err(&with_regions(256 * M, &["name=a,size=32M,base=0x10000000"])),
        err(&with_regions(256 * M, &["name=a,size=3M"])),
        file::parse("memory = \n[[", "x.toml").unwrap_err(),
    ];
    for e in cases {
        assert!(!e.to_string().contains('\n'), "{e}");
    }
}

#[test]
fn capture_devices_need_a_map_rule_and_unique_names() {
    let mut c = flags_form();
    c.capture = vec!["capture0".into(), "video-dev".into()];
    assert!(
        c.validate().is_ok(),
        "'*' maps capture0, a rule maps video-dev"
    );
    c.map = parse_map_rules("video-dev=video").unwrap();
    assert_eq!(err(&c), ConfigError::UnmappedDevice("capture0".into()));
    c.capture = vec!["video-dev".into(), "video-dev".into()];
    assert_eq!(err(&c), ConfigError::DuplicateDevice("video-dev".into()));
    c.capture = vec!["agent".into()];
    assert!(matches!(err(&c), ConfigError::BadName(_)));
    c.capture = (0..8).map(|i| format!("c{i}")).collect();
    assert!(matches!(err(&c), ConfigError::TooManyDevices(8)));
    let f = file::parse(
        "capture = [\"capture0\"]\ncma_map = \"*=a\"\n[[cma]]\nname = \"a\"\nsize = \"4M\"",
        "x.toml",
    )
    .unwrap();
    assert_eq!(f.capture, vec!["capture0"]);
    f.validate().unwrap();
}

#[test]
fn hostile_files_are_refused_not_crashed_on() {
    let deep = format!("memory = {}{}", "[".repeat(20000), "]".repeat(20000));
    let e = file::parse(&deep, "deep.toml").unwrap_err().to_string();
    assert!(e.contains("nested deeper than 32 levels"), "{e}");
    let huge = format!("# {}", "x".repeat(2 << 20));
    assert!(file::parse(&huge, "huge.toml").is_err());
    // Brackets inside strings and comments do not count.
    let ok = "guest_args = \"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[\" # [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[\nmemory = \"64M\"";
    assert_eq!(file::parse(ok, "ok.toml").unwrap().memory, 64 << 20);
}

#[test]
fn validated_regions_and_rules_build_the_allocator_as_given() {
    let mut camera = RegionConfig::new("camera", 8 * M);
    camera.order_per_bit = 2;
    let mut secret = RegionConfig::new("secret", 4 * M);
    secret.private = true;
    let config = VmConfig {
        regions: vec![RegionConfig::new("video", 16 * M), camera, secret],
        map: parse_map_rules("video-dev=video;*=camera").unwrap(),
        ..VmConfig::default()
    };
    let valid = config.validate().unwrap();
    let cma = cma::Cma::new(&valid.regions, &valid.map).unwrap();
    assert_eq!(cma.regions(), &valid.regions[..]);
    let stats = cma.stats();
    assert_eq!((stats[1].granule, stats[1].order_per_bit), (16 << 10, 2));
    assert!(stats[2].private && !stats[0].private);
    let mut evicted = |_: &RegionSpec, _, _| cma::ClaimOutcome::Claimed { pages_migrated: 0 };
    let c = cma
        .alloc("any", &cma::AllocRequest::new(4096), &mut evicted)
        .unwrap();
    assert_eq!((c.region, c.gpa), (1, valid.regions[1].base));
}

#[test]
fn region_descriptions_carry_what_the_guest_needs() {
    let valid = flags_form().validate().unwrap();
    let desc = region_desc(&valid.regions[1]).unwrap();
    assert_eq!((desc.id, desc.base, desc.size), (1, 0x800_0000, 32 * M));
    assert_eq!(desc.flags, 0);
}
