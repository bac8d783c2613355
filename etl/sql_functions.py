"""The functions analysts may call in ``POST /v1/sql`` and ``crypto-mesh sql``: an explicit allow-list.

:mod:`etl.sql` accepts a function call only if its name is listed here (aggregate functions also with the
combinators of :data:`AGGREGATE_COMBINATORS`, e.g. ``sumIf``, ``uniqExactOrNull``). The lists were taken from
ClickHouse 26's ``system.functions`` by category (the categories of the ClickHouse SQL reference, "Functions"),
aliases included, then reviewed: a category is listed only if none of its functions reads anything but its
arguments. Left out, on purpose:

- every name that is also a table function (``system.table_functions``: ``file``, ``url``, ``s3``,
  ``format``, ...), so that a listed name never reads outside ``crypto`` whatever its place in the query;
- categories "Other", "Introspection", "Internal", "Dictionary", "Embedded Dictionary", "Machine
  Learning", "AI", "Encryption", "Geo", "Time Series", "Bitmap": they read files, settings, dictionaries,
  the server's state or remote services (``file``, ``getSetting``, ``dictGet``, ``joinGet``,
  ``catboostEvaluate``, ``hostName``, ``currentUser``, ...) or are of no use here; :data:`OTHER` takes the
  few harmless ones analysts use (``toTypeName``, ``bar``, ``runningDifference``, ...);
- ``aggThrow`` (throws on purpose), ``flameGraph`` (stack traces), ``kqlParameterCast``.

``tests/test_etl_sql_policy.py`` checks that every listed name is a function of the engine, that none is a
table function or one of the forbidden names, and that no other function of the engine is reachable by a
listed name written in another case.
"""

from __future__ import annotations


def _names(text: str) -> frozenset[str]:
    return frozenset(text.split())


#: Category "Arithmetic".
ARITHMETIC = _names(
    """
    abs avg2 byteSwap divide divideDecimal divideOrNull gcd ifNotFinite intDiv intDivOrNull intDivOrZero
    isFinite isInfinite isNaN kqlBin kqlBinAt kqlDateTimeBinAt kqlDivide kqlMultiply kqlRangeCount lcm max2
    midpoint min2 minus mod modOrNull modulo moduloLegacy moduloOrNull moduloOrZero multiply multiplyDecimal
    negate plus pmod pmodOrNull positive_modulo positive_modulo_or_null positiveModulo positiveModuloOrNull
    sqr
    """
)

#: Category "Mathematical".
MATHEMATICAL = _names(
    """
    acos acosh asin asinh atan atan2 atanh cbrt cos cosh degrees e erf erfc exp exp10 exp2 factorial hypot
    intExp10 intExp2 isPrime isProbablePrime lgamma ln log log10 log1p log2 pi pow power proportionsZTest
    radians sigmoid sign sin sinh sqrt tan tanh tgamma width_bucket widthBucket
    """
)

#: Category "Rounding".
ROUNDING = _names(
    """
    ceil ceiling floor round roundAge roundBankers roundDown roundDuration roundToExp2 trunc truncate
    """
)

#: Category "Comparison".
COMPARISON = _names(
    """
    equals globalIn globalInIgnoreSet globalNotIn globalNotInIgnoreSet globalNotNullIn
    globalNotNullInIgnoreSet globalNullIn globalNullInIgnoreSet greater greaterOrEquals in inIgnoreSet
    isDistinctFrom isNotDistinctFrom less lessOrEquals notEquals notIn notInIgnoreSet notNullIn
    notNullInIgnoreSet nullIn nullInIgnoreSet
    """
)

#: Category "Logical".
LOGICAL = _names(
    """
    and not or xor
    """
)

#: Category "Conditional".
CONDITIONAL = _names(
    """
    caseWithoutExpr caseWithoutExpression clamp greatest if least multiIf
    """
)

#: Category "Null".
NULLS = _names(
    """
    assumeNotNull coalesce firstNonDefault ifNull isNotNull isNull isNullable isZeroOrNull nullIf toNullable
    """
)

#: Category "Type Conversion".
TYPE_CONVERSION = _names(
    """
    accurateCast accurateCastOrDefault accurateCastOrNull CAST DATE formatRow formatRowNoNewline
    fromUnixTimestamp64Micro fromUnixTimestamp64Milli fromUnixTimestamp64Nano fromUnixTimestamp64Second
    kqlToTimespan parseDateTime parseDateTime32BestEffort parseDateTime32BestEffortOrNull
    parseDateTime32BestEffortOrZero parseDateTime64 parseDateTime64BestEffort parseDateTime64BestEffortOrNull
    parseDateTime64BestEffortOrZero parseDateTime64BestEffortUS parseDateTime64BestEffortUSOrNull
    parseDateTime64BestEffortUSOrZero parseDateTime64InJodaSyntax parseDateTime64InJodaSyntaxOrNull
    parseDateTime64InJodaSyntaxOrZero parseDateTime64OrNull parseDateTime64OrZero parseDateTimeBestEffort
    parseDateTimeBestEffortOrNull parseDateTimeBestEffortOrZero parseDateTimeBestEffortUS
    parseDateTimeBestEffortUSOrNull parseDateTimeBestEffortUSOrZero parseDateTimeInJodaSyntax
    parseDateTimeInJodaSyntaxOrNull parseDateTimeInJodaSyntaxOrZero parseDateTimeOrNull parseDateTimeOrZero
    reinterpret reinterpretAsDate reinterpretAsDateTime reinterpretAsFixedString reinterpretAsFloat32
    reinterpretAsFloat64 reinterpretAsInt128 reinterpretAsInt16 reinterpretAsInt256 reinterpretAsInt32
    reinterpretAsInt64 reinterpretAsInt8 reinterpretAsString reinterpretAsUInt128 reinterpretAsUInt16
    reinterpretAsUInt256 reinterpretAsUInt32 reinterpretAsUInt64 reinterpretAsUInt8 reinterpretAsUUID
    str_to_date TO_UNIXTIME toBFloat16 toBFloat16OrNull toBFloat16OrZero toBool toDate toDate32
    toDate32OrDefault toDate32OrNull toDate32OrZero toDateOrDefault toDateOrNull toDateOrZero toDateTime
    toDateTime32 toDateTime64 toDateTime64OrDefault toDateTime64OrNull toDateTime64OrZero toDateTimeOrDefault
    toDateTimeOrNull toDateTimeOrZero toDecimal128 toDecimal128OrDefault toDecimal128OrNull toDecimal128OrZero
    toDecimal256 toDecimal256OrDefault toDecimal256OrNull toDecimal256OrZero toDecimal32 toDecimal32OrDefault
    toDecimal32OrNull toDecimal32OrZero toDecimal64 toDecimal64OrDefault toDecimal64OrNull toDecimal64OrZero
    toDecimalString toFixedString toFloat32 toFloat32OrDefault toFloat32OrNull toFloat32OrZero toFloat64
    toFloat64OrDefault toFloat64OrNull toFloat64OrZero toInt128 toInt128OrDefault toInt128OrNull
    toInt128OrZero toInt16 toInt16OrDefault toInt16OrNull toInt16OrZero toInt256 toInt256OrDefault
    toInt256OrNull toInt256OrZero toInt32 toInt32OrDefault toInt32OrNull toInt32OrZero toInt64
    toInt64OrDefault toInt64OrNull toInt64OrZero toInt8 toInt8OrDefault toInt8OrNull toInt8OrZero toInterval
    toIntervalDay toIntervalHour toIntervalMicrosecond toIntervalMillisecond toIntervalMinute toIntervalMonth
    toIntervalNanosecond toIntervalQuarter toIntervalSecond toIntervalWeek toIntervalYear toLowCardinality
    toString toStringCutToZero toTime toTime64 toTime64OrNull toTime64OrZero toTimeOrNull toTimeOrZero
    toUInt128 toUInt128OrDefault toUInt128OrNull toUInt128OrZero toUInt16 toUInt16OrDefault toUInt16OrNull
    toUInt16OrZero toUInt256 toUInt256OrDefault toUInt256OrNull toUInt256OrZero toUInt32 toUInt32OrDefault
    toUInt32OrNull toUInt32OrZero toUInt64 toUInt64OrDefault toUInt64OrNull toUInt64OrZero toUInt8
    toUInt8OrDefault toUInt8OrNull toUInt8OrZero toUnixTimestamp64Micro toUnixTimestamp64Milli
    toUnixTimestamp64Nano toUnixTimestamp64Second toUUID toUUIDOrZero
    """
)

#: Category "Dates and Times".
DATES_AND_TIMES = _names(
    """
    addDate addDays addHours addInterval addMicroseconds addMilliseconds addMinutes addMonths addNanoseconds
    addQuarters addSeconds addTupleOfIntervals addWeeks addYears age changeDay changeHour changeMinute
    changeMonth changeSecond changeYear curdate current_date current_timestamp date_bin date_diff DATE_DIFF
    DATE_FORMAT DATE_TRUNC dateDiff dateName dateTrunc DAY DAYOFMONTH DAYOFWEEK DAYOFYEAR formatDateTime
    formatDateTimeInJodaSyntax FROM_DAYS FROM_UNIXTIME from_utc_timestamp fromDaysSinceYearZero
    fromDaysSinceYearZero32 fromModifiedJulianDay fromModifiedJulianDayOrNull fromUnixTimestamp
    fromUnixTimestampInJodaSyntax fromUTCTimestamp HOUR LAST_DAY localtime localtimestamp makeDate makeDate32
    makeDateTime makeDateTime64 MICROSECOND MILLISECOND MINUTE MONTH monthName NANOSECOND now now64 nowInBlock
    nowInBlock64 QUARTER SECOND serverTimezone serverTimeZone subDate subtractDays subtractHours
    subtractInterval subtractMicroseconds subtractMilliseconds subtractMinutes subtractMonths
    subtractNanoseconds subtractQuarters subtractSeconds subtractTupleOfIntervals subtractWeeks subtractYears
    time_bucket timeDiff timeSlot timeSlots timestamp timestamp_diff TIMESTAMP_DIFF timestampDiff timezone
    timeZone timeZoneOf timezoneOf timezoneOffset timeZoneOffset TO_DAYS to_utc_timestamp today toDayOfMonth
    toDayOfWeek toDayOfYear toDaysInMonth toDaysSinceYearZero toHour toISOWeek toISOYear toLastDayOfMonth
    toLastDayOfWeek toMicrosecond toMillisecond toMinute toModifiedJulianDay toModifiedJulianDayOrNull
    toMonday toMonth toMonthNumSinceEpoch toNanosecond toQuarter toRelativeDayNum toRelativeHourNum
    toRelativeMinuteNum toRelativeMonthNum toRelativeQuarterNum toRelativeSecondNum toRelativeWeekNum
    toRelativeYearNum toSecond toStartOfDay toStartOfFifteenMinutes toStartOfFiveMinute toStartOfFiveMinutes
    toStartOfHour toStartOfInterval toStartOfISOYear toStartOfMicrosecond toStartOfMillisecond toStartOfMinute
    toStartOfMonth toStartOfNanosecond toStartOfQuarter toStartOfSecond toStartOfTenMinutes toStartOfWeek
    toStartOfYear toTimeWithFixedDate toTimeZone toTimezone toUnixTimestamp toUTCTimestamp toWeek toYear
    toYearNumSinceEpoch toYearWeek toYYYYMM toYYYYMMDD toYYYYMMDDhhmmss UTC_timestamp UTCTimestamp week YEAR
    yearweek yesterday YYYYMMDDhhmmssToDateTime YYYYMMDDhhmmssToDateTime64 YYYYMMDDToDate YYYYMMDDToDate32
    """
)

#: Category "String".
STRINGS = _names(
    """
    appendTrailingCharIfAbsent ascii base32Decode base32Encode base58Decode base58Encode base64Decode
    base64Encode base64URLDecode base64URLEncode basename byteHammingDistance byteSlice caseFoldUTF8
    CHAR_LENGTH CHARACTER_LENGTH chdb compareSubstrings concat concat_ws concatAssumeInjective
    concatWithSeparator concatWithSeparatorAssumeInjective conv convertCharset CRC32 CRC32IEEE CRC64
    damerauLevenshteinDistance decodeHTMLComponent decodeXMLComponent editDistance editDistanceUTF8
    encodeXMLComponent endsWith endsWithCaseInsensitive endsWithCaseInsensitiveUTF8 endsWithUTF8
    extractTextFromHTML firstLine FROM_BASE64 initcap initcapUTF8 isASCII isValidASCII isValidUTF8
    jaroSimilarity jaroWinklerSimilarity lcase left leftPad leftPadUTF8 leftUTF8 lengthUTF8
    levenshteinDistance levenshteinDistanceUTF8 lower lowerUTF8 lpad ltrim mid mismatches NATURAL_SORT_KEY
    naturalSortKey normalizeUTF8NFC normalizeUTF8NFD normalizeUTF8NFKC normalizeUTF8NFKCCasefold
    normalizeUTF8NFKD REGEXP_EXTRACT regexp_instr REGEXP_SUBSTR regexpExtract regexpInstr regexpPosition
    removeAccentsUTF8 removeDiacriticsUTF8 repeat reverseUTF8 right rightPad rightPadUTF8 rightUTF8 rpad rtrim
    soundex space sparseGrams sparseGramsHashes sparseGramsHashesUTF8 sparseGramsUTF8 startsWith
    startsWithCaseInsensitive startsWithCaseInsensitiveUTF8 startsWithUTF8 stringBytesEntropy stringBytesUniq
    stringJaccardIndex stringJaccardIndexUTF8 substr substring SUBSTRING_INDEX substringIndex
    substringIndexUTF8 substringUTF8 TO_BASE64 toValidUTF8 trim trimBoth trimLeft trimRight tryBase32Decode
    tryBase58Decode tryBase64Decode tryBase64URLDecode ucase upper upperUTF8
    """
)

#: Category "String Search".
STRING_SEARCH = _names(
    """
    countMatches countMatchesCaseInsensitive countSubstrings countSubstringsCaseInsensitive
    countSubstringsCaseInsensitiveUTF8 extract extractAll extractAllGroupsHorizontal extractGroups hasAllToken
    hasAllTokens hasAnyToken hasAnyTokens hasPhrase hasSubsequence hasSubsequenceCaseInsensitive
    hasSubsequenceCaseInsensitiveUTF8 hasSubsequenceUTF8 hasToken hasTokenCaseInsensitive
    hasTokenCaseInsensitiveOrNull hasTokenOrNull highlight ilike instr like locate match matchCaseInsensitive
    matchPhrase multiFuzzyMatchAllIndices multiFuzzyMatchAny multiFuzzyMatchAnyIndex multiMatchAllIndices
    multiMatchAny multiMatchAnyIndex multiSearchAllPositions multiSearchAllPositionsCaseInsensitive
    multiSearchAllPositionsCaseInsensitiveUTF8 multiSearchAllPositionsUTF8 multiSearchAny
    multiSearchAnyCaseInsensitive multiSearchAnyCaseInsensitiveUTF8 multiSearchAnyUTF8 multiSearchFirstIndex
    multiSearchFirstIndexCaseInsensitive multiSearchFirstIndexCaseInsensitiveUTF8 multiSearchFirstIndexUTF8
    multiSearchFirstPosition multiSearchFirstPositionCaseInsensitive
    multiSearchFirstPositionCaseInsensitiveUTF8 multiSearchFirstPositionUTF8 ngramDistance
    ngramDistanceCaseInsensitive ngramDistanceCaseInsensitiveUTF8 ngramDistanceUTF8 ngramSearch
    ngramSearchCaseInsensitive ngramSearchCaseInsensitiveUTF8 ngramSearchUTF8 notILike notLike notMatch
    notMatchCaseInsensitive position positionCaseInsensitive positionCaseInsensitiveUTF8 positionUTF8
    REGEXP_MATCHES
    """
)

#: Category "String Splitting".
STRING_SPLITTING = _names(
    """
    alphaTokens array_to_string arrayStringConcat extractAllGroups extractAllGroupsVertical naiveBayesNgrams
    ngrams reverseBySeparator splitByAlpha splitByChar splitByNonAlpha splitByRegexp splitByString
    splitByWhitespace tokens tokensForLikePattern
    """
)

#: Category "String Replacement".
STRING_REPLACEMENT = _names(
    """
    overlay overlayUTF8 printf REGEXP_REPLACE regexpQuoteMeta replace replaceAll replaceOne replaceRegexpAll
    replaceRegexpOne translate translateUTF8
    """
)

#: Category "Arrays".
ARRAYS = _names(
    """
    array array_remove arrayAll arrayAUC arrayAUCPR arrayAutocorrelation arrayAvg arrayBottomK arrayCompact
    arrayConcat arrayCount arrayCumSum arrayCumSumNonNegative arrayDifference arrayDistinct arrayDotProduct
    arrayElement arrayElementOrNull arrayEnumerate arrayEnumerateDense arrayEnumerateDenseRanked
    arrayEnumerateUniq arrayEnumerateUniqRanked arrayExcept arrayExists arrayFill arrayFilter arrayFirst
    arrayFirstIndex arrayFirstOrNull arrayFlatten arrayFlattenedLength arrayFold arrayIntersect
    arrayJaccardIndex arrayJoin arrayLast arrayLastIndex arrayLastOrNull arrayLevenshteinDistance
    arrayLevenshteinDistanceWeighted arrayMap arrayMax arrayMin arrayNormalizedGini arrayPartialReverseSort
    arrayPartialShuffle arrayPartialSort arrayPopBack arrayPopFront arrayPRAUC arrayProduct arrayPushBack
    arrayPushFront arrayRandomSample arrayReduce arrayReduceInRanges arrayRemove arrayResize arrayReverse
    arrayReverseFill arrayReverseSort arrayReverseSplit arrayROCAUC arrayRotateLeft arrayRotateRight
    arrayShiftLeft arrayShiftRight arrayShingles arrayShuffle arraySimilarity arraySlice arraySort arraySplit
    arraySum arraySymmetricDifference arrayTopK arrayTranspose arrayUnion arrayUniq arrayWithConstant arrayZip
    arrayZipUnaligned CARDINALITY countEqual empty emptyArrayDate emptyArrayDateTime emptyArrayFloat32
    emptyArrayFloat64 emptyArrayInt16 emptyArrayInt32 emptyArrayInt64 emptyArrayInt8 emptyArrayString
    emptyArrayToSingle emptyArrayUInt16 emptyArrayUInt32 emptyArrayUInt64 emptyArrayUInt8 flatten has hasAll
    hasAny hasSubstr indexOf indexOfAssumeSorted length notEmpty notHas OCTET_LENGTH randomHadamardTransform
    range replicate reverse unnest
    """
)

#: Category "Tuple".
TUPLES = _names(
    """
    dotProduct flattenTuple scalarProduct tuple tupleConcat tupleDivide tupleDivideByNumber tupleElement
    tupleHammingDistance tupleIntDiv tupleIntDivByNumber tupleIntDivOrZero tupleIntDivOrZeroByNumber
    tupleMinus tupleModulo tupleModuloByNumber tupleMultiply tupleMultiplyByNumber tupleNames tupleNegate
    tuplePlus tuplePositiveModuloByNumber tupleToNameValuePairs vectorDifference vectorSum
    """
)

#: Category "Map".
MAPS = _names(
    """
    extractKeyValuePairs extractKeyValuePairsWithEscaping map MAP_FROM_ARRAYS mapAdd mapAll mapApply mapConcat
    mapContains mapContainsKey mapContainsKeyLike mapContainsValue mapContainsValueLike mapExists
    mapExtractKeyLike mapExtractValueLike mapFilter mapFromArrays mapFromString mapKeys mapPartialReverseSort
    mapPartialSort mapPopulateSeries mapReverseSort mapSort mapSubtract mapUpdate mapValues str_to_map
    """
)

#: Category "Bit".
BITS = _names(
    """
    bitAnd bitCount bitHammingDistance bitNot bitOr bitRotateLeft bitRotateRight bitShiftLeft bitShiftRight
    bitSlice bitTest bitTestAll bitTestAny bitXor
    """
)

#: Category "Encoding".
ENCODING = _names(
    """
    bin bitmaskToArray bitmaskToList bitPositionsToArray char hex hilbertDecode hilbertEncode mortonDecode
    mortonEncode sqid sqidDecode sqidEncode unbin unhex
    """
)

#: Category "Hash".
HASHES = _names(
    """
    cityHash64 farmFingerprint64 farmHash64 gccMurmurHash halfMD5 hiveHash icebergHash intHash32 intHash64
    javaHash javaHashUTF16LE jumpConsistentHash kafkaMurmurHash keccak256 kostikConsistentHash MD4 MD5
    metroHash64 murmurHash2_32 murmurHash2_64 murmurHash3_128 murmurHash3_32 murmurHash3_64 ngramMinHash
    ngramMinHashArg ngramMinHashArgCaseInsensitive ngramMinHashArgCaseInsensitiveUTF8 ngramMinHashArgUTF8
    ngramMinHashCaseInsensitive ngramMinHashCaseInsensitiveUTF8 ngramMinHashUTF8 ngramSimHash
    ngramSimHashCaseInsensitive ngramSimHashCaseInsensitiveUTF8 ngramSimHashUTF8 RIPEMD160 SHA1 SHA224 SHA256
    SHA384 SHA512 SHA512_256 sipHash128 sipHash128Keyed sipHash128Reference sipHash128ReferenceKeyed sipHash64
    sipHash64Keyed URLHash wordShingleMinHash wordShingleMinHashArg wordShingleMinHashArgCaseInsensitive
    wordShingleMinHashArgCaseInsensitiveUTF8 wordShingleMinHashArgUTF8 wordShingleMinHashCaseInsensitive
    wordShingleMinHashCaseInsensitiveUTF8 wordShingleMinHashUTF8 wordShingleSimHash
    wordShingleSimHashCaseInsensitive wordShingleSimHashCaseInsensitiveUTF8 wordShingleSimHashUTF8 wyHash64
    xxh3 xxh3_128 xxHash32 xxHash64 xxHash64Spark yandexConsistentHash
    """
)

#: Category "JSON".
JSON = _names(
    """
    dynamicElement dynamicType isDynamicElementInSharedData isValidJSON JSON_ARRAY_LENGTH JSON_EXISTS
    JSON_QUERY JSON_VALUE JSONAllPaths JSONAllPathsWithTypes JSONAllValues JSONArrayLength JSONDynamicPaths
    JSONDynamicPathsWithTypes JSONExtract JSONExtractArrayRaw JSONExtractArrayRawCaseInsensitive
    JSONExtractBool JSONExtractBoolCaseInsensitive JSONExtractCaseInsensitive JSONExtractFloat
    JSONExtractFloatCaseInsensitive JSONExtractInt JSONExtractIntCaseInsensitive JSONExtractKeys
    JSONExtractKeysAndValues JSONExtractKeysAndValuesCaseInsensitive JSONExtractKeysAndValuesRaw
    JSONExtractKeysAndValuesRawCaseInsensitive JSONExtractKeysCaseInsensitive JSONExtractRaw
    JSONExtractRawCaseInsensitive JSONExtractString JSONExtractStringCaseInsensitive JSONExtractUInt
    JSONExtractUIntCaseInsensitive JSONHas JSONKey JSONLength jsonMergePatch JSONMergePatch
    JSONSharedDataPaths JSONSharedDataPathsWithTypes JSONType prettyPrintJSON simpleJSONExtractBool
    simpleJSONExtractFloat simpleJSONExtractInt simpleJSONExtractRaw simpleJSONExtractString
    simpleJSONExtractUInt simpleJSONHas toJSONString visitParamExtractBool visitParamExtractFloat
    visitParamExtractInt visitParamExtractRaw visitParamExtractString visitParamExtractUInt visitParamHas
    """
)

#: Category "UUID".
UUIDS = _names(
    """
    dateTime64ToSnowflakeID dateTimeToSnowflakeID dateTimeToUUIDv7 generateSnowflakeID generateUUIDv4
    generateUUIDv7 snowflakeIDToDateTime snowflakeIDToDateTime64 toUUIDOrDefault toUUIDOrNull UUIDNumToString
    UUIDStringToNum UUIDToNum UUIDv7ToDateTime
    """
)

#: Category "IP Address".
IP_ADDRESSES = _names(
    """
    cutIPv6 INET6_ATON INET6_NTOA INET_ATON INET_NTOA IPv4CIDRToRange IPv4NumToString IPv4NumToStringClassC
    IPv4StringToNum IPv4StringToNumOrDefault IPv4StringToNumOrNull IPv4ToIPv6 IPv6CIDRToRange IPv6NumToString
    IPv6StringToNum IPv6StringToNumOrDefault IPv6StringToNumOrNull isIPAddressInRange isIPv4String
    isIPv6String toIPv4 toIPv4OrDefault toIPv4OrNull toIPv4OrZero toIPv6 toIPv6OrDefault toIPv6OrNull
    toIPv6OrZero
    """
)

#: Category "Financial".
FINANCIAL = _names(
    """
    financialInternalRateOfReturn financialInternalRateOfReturnExtended financialNetPresentValue
    financialNetPresentValueExtended
    """
)

#: Category "Random Number".
RANDOM = _names(
    """
    fuzzBits rand rand32 rand64 randBernoulli randBinomial randCanonical randChiSquared randConstant
    randExponential randFisherF randLogNormal randNegativeBinomial randNormal randomFixedString
    randomPrintableASCII randomString randomStringUTF8 randPoisson randStudentT randUniform
    """
)

#: Category "Aggregate Functions".
AGGREGATE = _names(
    """
    analysisOfVariance anova any any_respect_nulls any_value any_value_respect_nulls anyHeavy anyLast
    anyLast_respect_nulls anyLastRespectNulls anyRespectNulls anyValueRespectNulls approx_top_count
    approx_top_k approx_top_sum argAndMax argAndMin argMax argMin array_agg avg avgWeighted BIT_AND BIT_OR
    BIT_XOR boundingRatio categoricalInformationValue contingency corr corrMatrix corrStable count COVAR_POP
    COVAR_SAMP covarPop covarPopMatrix covarPopStable covarSamp covarSampMatrix covarSampStable cramersV
    cramersVBiasCorrected cume_dist deltaSum deltaSumTimestamp dense_rank denseRank distinctDynamicTypes
    distinctJSONPaths distinctJSONPathsAndTypes entropy estimateCompressionRatio exponentialMovingAverage
    exponentialTimeDecayedAvg exponentialTimeDecayedCount exponentialTimeDecayedMax exponentialTimeDecayedSum
    first_value first_value_respect_nulls firstValueRespectNulls gini group_concat groupArray
    groupArrayInsertAt groupArrayIntersect groupArrayLast groupArrayMovingAvg groupArrayMovingSum
    groupArraySample groupArraySorted groupBitAnd groupBitmap groupBitmapAnd groupBitmapOr groupBitmapXor
    groupBitOr groupBitXor groupConcat groupFormat groupNumericIndexedVector groupUniqArray histogram
    intervalLengthSum kolmogorovSmirnovTest kurtPop kurtSamp lag lagInFrame largestTriangleThreeBuckets
    last_value last_value_respect_nulls lastValueRespectNulls lead leadInFrame lttb mannWhitneyUTest max
    max_by maxIntersections maxIntersectionsPosition maxMappedArrays meanZTest median medianBFloat16
    medianBFloat16Weighted medianDD medianDeterministic medianExact medianExactHigh medianExactLow
    medianExactWeighted medianExactWeightedInterpolated medianGK medianInterpolatedWeighted medianTDigest
    medianTDigestWeighted medianTiming medianTimingWeighted mergedJSONPatch min min_by minMappedArrays
    nonNegativeDerivative nothing nothingNull nothingUInt64 nth_value ntile percent_rank percentRank quantile
    quantileBFloat16 quantileBFloat16Weighted quantileDD quantileDeterministic quantileExact
    quantileExactExclusive quantileExactHigh quantileExactInclusive quantileExactLow quantileExactWeighted
    quantileExactWeightedInterpolated quantileGK quantileInterpolatedWeighted quantilePrometheusHistogram
    quantiles quantilesBFloat16 quantilesBFloat16Weighted quantilesDD quantilesDeterministic quantilesExact
    quantilesExactExclusive quantilesExactHigh quantilesExactInclusive quantilesExactLow
    quantilesExactWeighted quantilesExactWeightedInterpolated quantilesGK quantilesInterpolatedWeighted
    quantilesPrometheusHistogram quantilesTDigest quantilesTDigestWeighted quantilesTiming
    quantilesTimingWeighted quantileTDigest quantileTDigestWeighted quantileTiming quantileTimingWeighted rank
    rankCorr regr_avgx regr_avgy regr_count regr_intercept regr_r2 regr_slope regr_sxx regr_sxy regr_syy
    retention row_number sequenceCount sequenceMatch sequenceMatchEvents sequenceNextNode
    simpleLinearRegression singleValueOrNull skewPop skewSamp sparkBar sparkbar STD STDDEV STDDEV_POP
    STDDEV_SAMP stddevPop stddevPopStable stddevSamp stddevSampStable string_agg studentTTest
    studentTTestOneSample sum sumCount sumKahan sumMapFiltered sumMapFilteredWithOverflow sumMappedArrays
    sumMapWithOverflow sumWithOverflow theilsU timeSeriesAvgToGrid timeSeriesBottomKMasks
    timeSeriesChangesToGrid timeSeriesCountToGrid timeSeriesDeltaToGrid timeSeriesDerivToGrid
    timeSeriesGroupArray timeSeriesIncreaseToGrid timeSeriesInstantDeltaToGrid timeSeriesInstantRateToGrid
    timeSeriesLastToGrid timeSeriesLastTwoSamples timeSeriesLimitKMasks timeSeriesMaxToGrid
    timeSeriesMinToGrid timeSeriesPredictLinearToGrid timeSeriesRateToGrid
    timeSeriesResampleToGridWithStaleness timeSeriesResetsToGrid timeSeriesSumToGrid
    timeSeriesTimestampOfMaxToGrid timeSeriesTimestampOfMinToGrid timeSeriesTopKMasks topK topKWeighted uniq
    uniqCombined uniqCombined64 uniqExact uniqHLL12 uniqUpTo VAR_POP VAR_SAMP varPop varPopStable varSamp
    varSampStable welchTTest windowFunnel
    """
)

#: Harmless functions of the categories "Other" and "Internal": type names, formatting of sizes and
#: durations, bars, running differences of a block, ``CASE x WHEN`` (``caseWithExpression``).
OTHER = _names(
    """
    bar caseWithExpression countDigits finalizeAggregation formatReadableDecimalSize formatReadableQuantity
    formatReadableSize formatReadableTimeDelta identity ignore isDecimalOverflow materialize neighbor
    parseReadableSize parseReadableSizeOrNull parseReadableSizeOrZero parseTimeDelta runningDifference
    runningDifferenceStartingWithFirstValue toColumnTypeName toTypeName transform visibleWidth
    """
)

#: Nodes the parser writes as functions that are syntax, not entries of ``system.functions``:
#: ``x -> expr`` (``lambda``) and ``EXISTS (subquery)``.
SYNTAX = frozenset({"lambda", "exists"})

#: Scalar functions (and syntax) analysts may call.
SCALAR = (
    ARITHMETIC | MATHEMATICAL | ROUNDING | COMPARISON | LOGICAL | CONDITIONAL | NULLS | TYPE_CONVERSION
    | DATES_AND_TIMES | STRINGS | STRING_SEARCH | STRING_SPLITTING | STRING_REPLACEMENT | ARRAYS | TUPLES
    | MAPS | BITS | ENCODING | HASHES | JSON | UUIDS | IP_ADDRESSES | FINANCIAL | RANDOM | OTHER | SYNTAX
)

#: Aggregate-function combinators (suffixes) accepted after an allowed aggregate function, any number of
#: times (``sumIf``, ``avgIfOrNull``); ClickHouse reference, "Aggregate Function Combinators".
AGGREGATE_COMBINATORS = ("If", "Distinct", "OrNull", "OrDefault", "Array", "ForEach", "Merge", "State",
                         "ArgMin", "ArgMax", "Map", "Resample", "SimpleState")

#: Table functions analysts may read from: ``numbers(n)`` generates ``n`` rows (bounded by the query limits).
TABLE_FUNCTIONS = frozenset({"numbers"})

#: Every function name accepted anywhere in a query (aggregates without combinators).
ALLOWED = SCALAR | AGGREGATE | TABLE_FUNCTIONS
