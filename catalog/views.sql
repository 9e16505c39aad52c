-- DSA-110 contimg product catalog: DuckDB views over the append-only Parquet tables.
-- Generated from catalog/schema.py by `python -m catalog.views` (do not edit by hand).
--
-- DuckDB command line: start it in the catalog root (which keeps a copy of this file):
--     cd <catalog_dir> && duckdb -init views.sql
-- Python: catalog.query.connect(catalog_dir) (skips unreadable files with a warning).
--
-- <table>_all   every row ever appended (the history), each event_id once
-- <table>       the latest row per key (ORDER BY recorded_at DESC, event_id DESC)
--
-- Keys: groups: group_id | ms_index: group_id | cal_registry: set_name, table_path | images: path | qa_metrics: subject, metric | stage_runs: event_id | archived: source_path | disk_usage: area, kind | mosaics: mosaic_id

-- Sources (globs relative to the catalog root)
CREATE OR REPLACE MACRO groups_source() AS TABLE
    SELECT * FROM read_parquet('groups/*/*.parquet', hive_partitioning = true, union_by_name = true, hive_types = {'obs_date': 'VARCHAR'});
CREATE OR REPLACE MACRO ms_index_source() AS TABLE
    SELECT * FROM read_parquet('ms_index/*/*.parquet', hive_partitioning = true, union_by_name = true, hive_types = {'obs_date': 'VARCHAR'});
CREATE OR REPLACE MACRO cal_registry_source() AS TABLE
    SELECT * FROM read_parquet('cal_registry/*/*.parquet', hive_partitioning = true, union_by_name = true, hive_types = {'obs_date': 'VARCHAR'});
CREATE OR REPLACE MACRO images_source() AS TABLE
    SELECT * FROM read_parquet('images/*/*.parquet', hive_partitioning = true, union_by_name = true, hive_types = {'obs_date': 'VARCHAR'});
CREATE OR REPLACE MACRO qa_metrics_source() AS TABLE
    SELECT * FROM read_parquet('qa_metrics/*/*.parquet', hive_partitioning = true, union_by_name = true, hive_types = {'obs_date': 'VARCHAR'});
CREATE OR REPLACE MACRO stage_runs_source() AS TABLE
    SELECT * FROM read_parquet('stage_runs/*/*.parquet', hive_partitioning = true, union_by_name = true, hive_types = {'obs_date': 'VARCHAR'});
CREATE OR REPLACE MACRO archived_source() AS TABLE
    SELECT * FROM read_parquet('archived/*/*.parquet', hive_partitioning = true, union_by_name = true, hive_types = {'obs_date': 'VARCHAR'});
CREATE OR REPLACE MACRO disk_usage_source() AS TABLE
    SELECT * FROM read_parquet('disk_usage/*/*.parquet', hive_partitioning = true, union_by_name = true, hive_types = {'obs_date': 'VARCHAR'});
CREATE OR REPLACE MACRO mosaics_source() AS TABLE
    SELECT * FROM read_parquet('mosaics/*/*.parquet', hive_partitioning = true, union_by_name = true, hive_types = {'obs_date': 'VARCHAR'});

-- @views
CREATE OR REPLACE VIEW groups_all AS
    SELECT * FROM groups_source()
    QUALIFY row_number() OVER (PARTITION BY event_id) = 1;
CREATE OR REPLACE VIEW groups AS
    SELECT * FROM groups_source()
    QUALIFY row_number() OVER (PARTITION BY group_id ORDER BY recorded_at DESC, event_id DESC) = 1;
CREATE OR REPLACE VIEW ms_index_all AS
    SELECT * FROM ms_index_source()
    QUALIFY row_number() OVER (PARTITION BY event_id) = 1;
CREATE OR REPLACE VIEW ms_index AS
    SELECT * FROM ms_index_source()
    QUALIFY row_number() OVER (PARTITION BY group_id ORDER BY recorded_at DESC, event_id DESC) = 1;
CREATE OR REPLACE VIEW cal_registry_all AS
    SELECT * FROM cal_registry_source()
    QUALIFY row_number() OVER (PARTITION BY event_id) = 1;
CREATE OR REPLACE VIEW cal_registry AS
    SELECT * FROM cal_registry_source()
    QUALIFY row_number() OVER (PARTITION BY set_name, table_path ORDER BY recorded_at DESC, event_id DESC) = 1;
CREATE OR REPLACE VIEW images_all AS
    SELECT * FROM images_source()
    QUALIFY row_number() OVER (PARTITION BY event_id) = 1;
CREATE OR REPLACE VIEW images AS
    SELECT * FROM images_source()
    QUALIFY row_number() OVER (PARTITION BY path ORDER BY recorded_at DESC, event_id DESC) = 1;
CREATE OR REPLACE VIEW qa_metrics_all AS
    SELECT * FROM qa_metrics_source()
    QUALIFY row_number() OVER (PARTITION BY event_id) = 1;
CREATE OR REPLACE VIEW qa_metrics AS
    SELECT * FROM qa_metrics_source()
    QUALIFY row_number() OVER (PARTITION BY subject, metric ORDER BY recorded_at DESC, event_id DESC) = 1;
CREATE OR REPLACE VIEW stage_runs_all AS
    SELECT * FROM stage_runs_source()
    QUALIFY row_number() OVER (PARTITION BY event_id) = 1;
CREATE OR REPLACE VIEW stage_runs AS
    SELECT * FROM stage_runs_source()
    QUALIFY row_number() OVER (PARTITION BY event_id ORDER BY recorded_at DESC, event_id DESC) = 1;
CREATE OR REPLACE VIEW archived_all AS
    SELECT * FROM archived_source()
    QUALIFY row_number() OVER (PARTITION BY event_id) = 1;
CREATE OR REPLACE VIEW archived AS
    SELECT * FROM archived_source()
    QUALIFY row_number() OVER (PARTITION BY source_path ORDER BY recorded_at DESC, event_id DESC) = 1;
CREATE OR REPLACE VIEW disk_usage_all AS
    SELECT * FROM disk_usage_source()
    QUALIFY row_number() OVER (PARTITION BY event_id) = 1;
CREATE OR REPLACE VIEW disk_usage AS
    SELECT * FROM disk_usage_source()
    QUALIFY row_number() OVER (PARTITION BY area, kind ORDER BY recorded_at DESC, event_id DESC) = 1;
CREATE OR REPLACE VIEW mosaics_all AS
    SELECT * FROM mosaics_source()
    QUALIFY row_number() OVER (PARTITION BY event_id) = 1;
CREATE OR REPLACE VIEW mosaics AS
    SELECT * FROM mosaics_source()
    QUALIFY row_number() OVER (PARTITION BY mosaic_id ORDER BY recorded_at DESC, event_id DESC) = 1;
