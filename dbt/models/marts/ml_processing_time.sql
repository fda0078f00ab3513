{# How long the ML API took per prediction, per day (APPROX_QUANTILES, 100 buckets). #}
{{ config(
    incremental_strategy='merge',
    unique_key='prediction_day',
    partition_by={'field': 'prediction_day', 'data_type': 'date', 'granularity': 'day'}
) }}
{%- set days = changed_days(ref('stg_predictions'), 'prediction_at', 'refreshed_at', 'refreshed_at') %}

select
    date(prediction_at) as prediction_day,
    count(processing_time_ms) as predictions,
    avg(processing_time_ms) as mean_ms,
    approx_quantiles(processing_time_ms, 100)[offset(50)] as p50_ms,
    approx_quantiles(processing_time_ms, 100)[offset(95)] as p95_ms,
    approx_quantiles(processing_time_ms, 100)[offset(99)] as p99_ms,
    current_timestamp() as refreshed_at
from {{ ref('stg_predictions') }}
where {{ in_days('prediction_at', days) }} and processing_time_ms is not null
group by 1
