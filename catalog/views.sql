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
-- Keys: groups: group_id | ms_index: group_id | cal_registry: set_name, table_path | images: path | qa_metrics: subject, metric | stage_runs: event_id | archived: source_path | disk_usage: area, kind | sources: image_path, source_id | photometry: image_path, source_name | mosaics: mosaic_id

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
CREATE OR REPLACE MACRO sources_source() AS TABLE
    SELECT * FROM read_parquet('sources/*/*.parquet', hive_partitioning = true, union_by_name = true, hive_types = {'obs_date': 'VARCHAR'});
CREATE OR REPLACE MACRO photometry_source() AS TABLE
    SELECT * FROM read_parquet('photometry/*/*.parquet', hive_partitioning = true, union_by_name = true, hive_types = {'obs_date': 'VARCHAR'});
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
CREATE OR REPLACE VIEW sources_all AS
    SELECT * FROM sources_source()
    QUALIFY row_number() OVER (PARTITION BY event_id) = 1;
CREATE OR REPLACE VIEW sources AS
    SELECT * FROM sources_source()
    QUALIFY row_number() OVER (PARTITION BY image_path, source_id ORDER BY recorded_at DESC, event_id DESC) = 1;
CREATE OR REPLACE VIEW photometry_all AS
    SELECT * FROM photometry_source()
    QUALIFY row_number() OVER (PARTITION BY event_id) = 1;
CREATE OR REPLACE VIEW photometry AS
    SELECT * FROM photometry_source()
    QUALIFY row_number() OVER (PARTITION BY image_path, source_name ORDER BY recorded_at DESC, event_id DESC) = 1;
CREATE OR REPLACE VIEW mosaics_all AS
    SELECT * FROM mosaics_source()
    QUALIFY row_number() OVER (PARTITION BY event_id) = 1;
CREATE OR REPLACE VIEW mosaics AS
    SELECT * FROM mosaics_source()
    QUALIFY row_number() OVER (PARTITION BY mosaic_id ORDER BY recorded_at DESC, event_id DESC) = 1;

-- Derived views (over the views above)
CREATE OR REPLACE MACRO variability_at(eta_min := 5.0, v_min := 0.1, min_epochs := 10, min_snr := 5.0, start_mjd := 0.0, end_mjd := 1000000.0) AS TABLE
    WITH epochs AS (
        SELECT source_name, ra_deg, dec_deg, mid_mjd, peak_jy AS f, rms_jy AS e, snr, 1.0 / (rms_jy * rms_jy) AS w
        FROM photometry
        WHERE image_kind = 'group' AND coalesce(len(flags), 0) = 0
          AND isfinite(peak_jy) AND isfinite(rms_jy) AND rms_jy > 0
          AND mid_mjd >= start_mjd AND mid_mjd <= end_mjd
    ), sums AS (
        SELECT source_name, count(*) AS n_epochs, min(mid_mjd) AS first_mjd, max(mid_mjd) AS last_mjd,
               arg_max(ra_deg, mid_mjd) AS ra_deg, arg_max(dec_deg, mid_mjd) AS dec_deg,
               avg(f) AS mean_jy, sum(w * f) / sum(w) AS wmean_jy, stddev_samp(f) AS std_jy,
               max(coalesce(snr, f / e)) AS max_snr
        FROM epochs GROUP BY source_name
    ), metrics AS (
        SELECT s.source_name, any_value(s.ra_deg) AS ra_deg, any_value(s.dec_deg) AS dec_deg,
               any_value(s.n_epochs) AS n_epochs, any_value(s.first_mjd) AS first_mjd,
               any_value(s.last_mjd) AS last_mjd, any_value(s.mean_jy) AS mean_jy,
               any_value(s.wmean_jy) AS wmean_jy,
               any_value(s.std_jy) / nullif(any_value(s.mean_jy), 0) AS v,
               CASE WHEN any_value(s.n_epochs) > 1
                    THEN sum(p.w * (p.f - s.wmean_jy) * (p.f - s.wmean_jy)) / (any_value(s.n_epochs) - 1) END AS eta,
               max(abs(p.f - s.wmean_jy) / p.e) AS max_dev_sigma, any_value(s.max_snr) AS max_snr
        FROM sums s JOIN epochs p USING (source_name)
        GROUP BY s.source_name
    )
    SELECT *, coalesce(n_epochs >= min_epochs AND eta >= eta_min AND v >= v_min AND max_snr >= min_snr, false)
              AS is_candidate
    FROM metrics;
CREATE OR REPLACE VIEW variability AS
    SELECT * FROM variability_at();
